// Ternary weights x int8 activations, summed exactly in i32, then scaled
// once per output as the CPU's BitLinear does.
//
// Weights are [words, rows] u32 (column-major by word, so neighbouring
// invocations, neighbouring rows, read neighbouring words): each word holds
// 16 columns as 2-bit `code + 1`, laid out so that `(word >> 2i) &
// 0x03030303` puts columns 4i..4i+3 into the four byte lanes, the order of
// activation word i. `dot4I8Packed` then sums (code + 1) * x, and
// subtracting the row's code sum leaves sum code * x.

struct Params {
    rows: u32,
    // u32 weight words per row (padded columns / 16).
    words: u32,
    // u32 words per activation code row (padded columns / 4).
    stride: u32,
    // bit 0: add into `out` (the residual stream); bit 1: the scale
    // multiplies (autobitlinear) instead of dividing (bitlinear);
    // bit 2: token t's output row is its KV cache row (writing into a
    // KV cache).
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> wscale: array<f32>;
@group(0) @binding(4) var<storage, read> codes: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<f32>;
@group(0) @binding(6) var<storage, read> sums: array<i32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
// (position, cache row) per token.
@group(0) @binding(8) var<storage, read> tokens: array<u32>;

// Tokens per invocation: each weight word is read once for all of them.
const TOK: u32 = 4u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    let t0 = gid.y * TOK;
    if r >= p.rows || t0 >= step.n {
        return;
    }
    let nt = min(TOK, step.n - t0);
    // Rows past the last token repeat it; their sums are never written.
    let x0 = t0 * p.stride;
    let x1 = min(t0 + 1u, step.n - 1u) * p.stride;
    let x2 = min(t0 + 2u, step.n - 1u) * p.stride;
    let x3 = min(t0 + 3u, step.n - 1u) * p.stride;
    var acc = vec4<i32>(0);
    for (var k = 0u; k < p.words; k++) {
        let word = w[k * p.rows + r];
        for (var i = 0u; i < 4u; i++) {
            let g = (word >> (2u * i)) & 0x03030303u;
            let xi = k * 4u + i;
            acc.x += dot4I8Packed(g, codes[x0 + xi]);
            acc.y += dot4I8Packed(g, codes[x1 + xi]);
            acc.z += dot4I8Packed(g, codes[x2 + xi]);
            acc.w += dot4I8Packed(g, codes[x3 + xi]);
        }
    }
    let ws = wscale[r];
    for (var tt = 0u; tt < nt; tt++) {
        let t = t0 + tt;
        let d = f32(acc[tt] - sums[t]);
        let sx = scales[t];
        var y: f32;
        if (p.flags & 2u) != 0u {
            y = d / sx * ws;
        } else {
            y = d / (ws * sx);
        }
        var row = t;
        if (p.flags & 4u) != 0u {
            row = tokens[2u * t + 1u];
        }
        let idx = row * p.rows + r;
        if (p.flags & 1u) != 0u {
            out[idx] += y;
        } else {
            out[idx] = y;
        }
    }
}
