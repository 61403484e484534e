// Per-forward values shared by every dispatch of one pass: written once
// with `Queue::write_buffer` before the pass is submitted.
struct Step {
    // Tokens in this pass.
    n: u32,
    // Position of the first of them (tokens already in the KV cache).
    start: u32,
    // Rows that get logits (1 or n).
    m: u32,
    // Row of the residual stream the first logit row comes from.
    first: u32,
}
