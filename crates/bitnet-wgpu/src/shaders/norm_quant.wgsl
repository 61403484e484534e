// RMSNorm then per-token absmax int8 quantization (NUMERICS.md): one
// workgroup per token row. Every BitNet linear input is a norm output, so
// the normalized floats never reach memory: only the int8 codes (four per
// u32, byte b = column 4w + b, zero past `cols`), the scale 127 / absmax
// and the code sum (the ternary kernel's offset correction) do.

struct Params {
    cols: u32,
    // u32 words per code row (padded columns / 4).
    stride: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> scales: array<f32>;
@group(0) @binding(6) var<storage, read_write> sums: array<i32>;
// Set to 1 when a row's absmax is not finite (NaN or infinity upstream).
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

const WG: u32 = 256u;
var<workgroup> fred: array<f32, 256>;
var<workgroup> ired: array<i32, 256>;

fn sum_f32(v: f32, lid: u32) -> f32 {
    fred[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            fred[lid] = fred[lid] + fred[lid + s];
        }
        workgroupBarrier();
    }
    let r = fred[0];
    workgroupBarrier();
    return r;
}

fn max_f32(v: f32, lid: u32) -> f32 {
    fred[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            fred[lid] = max(fred[lid], fred[lid + s]);
        }
        workgroupBarrier();
    }
    let r = fred[0];
    workgroupBarrier();
    return r;
}

fn sum_i32(v: i32, lid: u32) -> i32 {
    ired[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            ired[lid] = ired[lid] + ired[lid + s];
        }
        workgroupBarrier();
    }
    let r = ired[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x;
    if row >= step.n {
        return;
    }
    let base = row * p.cols;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let inv = 1.0 / sqrt(sum_f32(ss, lid) / f32(p.cols) + p.eps);
    var amax = 0.0;
    // `max` may drop a NaN operand, so every value is tested for NaN or
    // infinity by its exponent bits (compilers may assume `v != v` false).
    var nonfinite = 0.0;
    for (var i = lid; i < p.cols; i += WG) {
        let v = abs(x[base + i] * inv * weight[i]);
        amax = max(amax, v);
        if (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u {
            nonfinite = 1.0;
        }
    }
    let m = max_f32(amax, lid);
    let bad = max_f32(nonfinite, lid) > 0.0;
    let s = 127.0 / max(m, 1e-5);
    var total = 0i;
    for (var w = lid; w < p.stride; w += WG) {
        var packed = 0u;
        for (var b = 0u; b < 4u; b++) {
            let c = w * 4u + b;
            if c < p.cols {
                let q = i32(round(clamp(x[base + c] * inv * weight[c] * s, -128.0, 127.0)));
                total += q;
                packed |= (bitcast<u32>(q) & 0xffu) << (8u * b);
            }
        }
        codes[row * p.stride + w] = packed;
    }
    let sum = sum_i32(total, lid);
    if lid == 0u {
        scales[row] = s;
        sums[row] = sum;
        if bad {
            atomicStore(&status[0], 1u);
        }
    }
}
