// gate = act(gate) * up, element-wise over [n, cols].

struct Params {
    cols: u32,
    // 0: ReLU², 1: SiLU.
    act: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if c >= p.cols || t >= step.n {
        return;
    }
    let i = t * p.cols + c;
    let g = gate[i];
    var a: f32;
    if p.act == 0u {
        let r = select(g, 0.0, g < 0.0);
        a = r * r;
    } else {
        a = g / (1.0 + exp(-g));
    }
    gate[i] = a * up[i];
}
