// Per-forward values shared by every dispatch of one pass: written once
// with `Queue::write_buffer` before the pass is submitted.
//
// Where each token goes is per token, in a `tokens` storage buffer of
// (position, KV cache row) pairs: the tokens of one pass may belong to
// several sequences, each at its own position in its own slot of the
// cache (cache row = slot * context + position).
struct Step {
    // Tokens in this pass.
    n: u32,
    // Rows that get logits (the `logit_rows` buffer lists their tokens).
    m: u32,
    _pad0: u32,
    _pad1: u32,
}
