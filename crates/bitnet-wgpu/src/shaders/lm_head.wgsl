// Logits of one slice of the vocabulary (the output matrix is split so
// that no binding exceeds the device's storage-buffer limit). Weights are
// transposed, [hidden, slice rows], so neighbouring invocations read
// neighbouring words: f32 bits, or two f16 (rows 2j and 2j + 1) per word.

struct Params {
    h: u32,
    // Vocabulary rows in this slice.
    rows: u32,
    vocab: u32,
    // First vocabulary row of this slice.
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn main_f32(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let row = gid.y;
    if j >= p.rows || row >= step.m {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < p.h; k++) {
        acc += x[row * p.h + k] * bitcast<f32>(w[k * p.rows + j]);
    }
    logits[row * p.vocab + p.offset + j] = acc;
}

@compute @workgroup_size(64)
fn main_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let row = gid.y;
    let pairs = (p.rows + 1u) / 2u;
    if j >= pairs || row >= step.m {
        return;
    }
    var acc = vec2<f32>(0.0);
    for (var k = 0u; k < p.h; k++) {
        acc += x[row * p.h + k] * unpack2x16float(w[k * pairs + j]);
    }
    let out = row * p.vocab + p.offset + 2u * j;
    logits[out] = acc.x;
    if 2u * j + 1u < p.rows {
        logits[out + 1u] = acc.y;
    }
}
