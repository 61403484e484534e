// Rotate-half RoPE in place on `heads` head vectors per row, at each
// token's position, from the CPU's own cos/sin table.

struct Params {
    heads: u32,
    d: u32,
    // Floats per row of `x`.
    row_stride: u32,
    // bit 0: token t's row is its KV cache row (keys in the cache).
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
// (position, cache row) per token.
@group(0) @binding(5) var<storage, read> tokens: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.d / 2u;
    let i = gid.x;
    let t = gid.y;
    if i >= p.heads * half || t >= step.n {
        return;
    }
    let head = i / half;
    let j = i % half;
    let pos = tokens[2u * t];
    var row = t;
    if (p.flags & 1u) != 0u {
        row = tokens[2u * t + 1u];
    }
    let base = row * p.row_stride + head * p.d;
    let c = cos_t[pos * half + j];
    let s = sin_t[pos * half + j];
    let x1 = x[base + j];
    let x2 = x[base + j + half];
    x[base + j] = x1 * c - x2 * s;
    x[base + j + half] = x2 * c + x1 * s;
}
