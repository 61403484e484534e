// Causal attention of one query (token t, head h) per workgroup over its
// sequence's slot of the KV cache (positions 0..=its own), in tiles of 64 positions with a running max and sum (the
// softmax is exact up to f32 rounding; no score matrix is stored, so the
// context length is bounded only by the cache). Head dim <= 256.

struct Params {
    heads: u32,
    kv_heads: u32,
    d: u32,
    // Floats per query row and per cache row.
    q_stride: u32,
    kv_stride: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(4) var<storage, read> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
// (position, cache row) per token.
@group(0) @binding(6) var<storage, read> tokens: array<u32>;

const WG: u32 = 64u;
const NEG: f32 = -3.0e38;
var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let head = wg.y;
    if t >= step.n {
        return;
    }
    let kvh = head / (p.heads / p.kv_heads);
    let pos = tokens[2u * t];
    let ctx = pos + 1u;
    // Cache row of the sequence's position 0.
    let first = tokens[2u * t + 1u] - pos;
    let qb = t * p.q_stride + head * p.d;
    for (var i = lid; i < p.d; i += WG) {
        qs[i] = q[qb + i];
    }
    workgroupBarrier();
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var base = 0u; base < ctx; base += WG) {
        let j = base + lid;
        var s = NEG;
        if j < ctx {
            let kb = (first + j) * p.kv_stride + kvh * p.d;
            var dot = 0.0;
            for (var i = 0u; i < p.d; i++) {
                dot += qs[i] * kc[kb + i];
            }
            s = dot * p.scale;
        }
        sc[lid] = s;
        workgroupBarrier();
        let count = min(WG, ctx - base);
        var tmax = NEG;
        for (var i = 0u; i < count; i++) {
            tmax = max(tmax, sc[i]);
        }
        let mn = max(m, tmax);
        let corr = exp(m - mn);
        l *= corr;
        acc *= corr;
        for (var i = 0u; i < count; i++) {
            let wgt = exp(sc[i] - mn);
            l += wgt;
            let vb = (first + base + i) * p.kv_stride + kvh * p.d;
            for (var r = 0u; r < 4u; r++) {
                let dim = lid + r * WG;
                if dim < p.d {
                    acc[r] += wgt * vc[vb + dim];
                }
            }
        }
        m = mn;
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let dim = lid + r * WG;
        if dim < p.d {
            o[qb + dim] = acc[r] / l;
        }
    }
}
