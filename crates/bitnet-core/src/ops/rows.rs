//! Slice-level kernels behind the tensor ops, for callers that manage their
//! own buffers (the inference engine reuses one set per session instead of
//! allocating a tensor per op). The tensor ops in this module's siblings are
//! thin wrappers over these, so both paths compute identical bits.

use super::exp::{exp_fast, exp_in_place};

/// RMSNorm of each row of `x` (rows of `weight.len()`), into `out`:
/// `x * (1 / sqrt(mean(x²) + eps)) * weight`, in the reference's order.
///
/// Panics if `x` and `out` differ in length or `weight` is empty; the tensor
/// op checks shapes before calling.
pub fn rms_norm_into(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "rms_norm_into: x and out lengths differ"
    );
    let h = weight.len();
    for (row, dst) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ms = sum_of_squares(row) / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((d, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * inv * w;
        }
    }
}

/// `Σ v²` in eight running sums, combined pairwise at the end. One running
/// sum is a chain of dependent float adds, which the compiler may not
/// reorder: ~1 ns an element, RMSNorm was ~2.5% of a prefill. Eight lanes
/// vectorize; the order is fixed, so every machine gets the same bits.
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    let mut sum = ((a + e) + (b + f)) + ((c + g) + (d + h));
    for v in tail {
        sum += v * v;
    }
    sum
}

/// Numerically stable softmax of one row, in place. Returns `false` (and
/// leaves the row untouched) when every entry is `-inf`.
///
/// Each pass is a loop the compiler vectorizes: the largest entry and the
/// sum over eight lanes ([`max`], [`sum`]), the exponentials by
/// [`exp_in_place`] (within 2 ulp of libm's `expf` where that is a normal
/// float, 0 below it; AVX2 where present).
/// A libm call per score, many of them on its slow underflow path for
/// far-off scores, was 5% of a 125M-shape prefill.
pub fn softmax_in_place(row: &mut [f32]) -> bool {
    let top = max(row);
    if top == f32::NEG_INFINITY {
        return false;
    }
    for v in row.iter_mut() {
        *v -= top;
    }
    exp_in_place(row);
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
    true
}

/// Precomputed RoPE cos/sin (HF "rotate_half": dims `i` and `i + d/2` pair up)
/// for a list of positions.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles for `positions`: `inv_freq[i] = 1 / theta^(2i/d)` and
    /// `a = pos * inv_freq[i]`, all in f32 like the reference. `head_dim`
    /// must be even (callers validate).
    pub fn new(head_dim: usize, theta: f32, positions: impl IntoIterator<Item = usize>) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Number of positions in the table.
    pub fn len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Whether the table has no positions.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// The cos and sin tables, each `[positions, head_dim / 2]` row-major:
    /// what another device uploads so that its rotations use the same
    /// angles bit for bit.
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates one head vector `x` (`head_dim` long) by the angles of table
    /// row `row`, writing into `out`.
    pub fn rotate(&self, x: &[f32], row: usize, out: &mut [f32]) {
        out.copy_from_slice(x);
        self.rotate_in_place(out, row);
    }

    /// Rotates one head vector in place.
    pub fn rotate_in_place(&self, x: &mut [f32], row: usize) {
        let h = self.half;
        let (c, s) = (
            &self.cos[row * h..(row + 1) * h],
            &self.sin[row * h..(row + 1) * h],
        );
        for i in 0..h {
            let (x1, x2) = (x[i], x[i + h]);
            x[i] = x1 * c[i] - x2 * s[i];
            x[i + h] = x2 * c[i] + x1 * s[i];
        }
    }
}

/// `x * sigmoid(x)`, as `x / (1 + e^-x)` with [`exp_fast`] (within 2 ulp
/// of libm's `expf`): no library call, so loops over it vectorize. A call
/// per element was 12% of a SiLU model's prefill samples (125M shape).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_fast(-x))
}

/// `relu(x)²`; NaN stays NaN (hiding it would hide upstream bugs).
#[inline]
pub fn relu2(x: f32) -> f32 {
    let r = if x < 0.0 { 0.0 } else { x };
    r * r
}

/// `gate[i] = silu(gate[i]) · up[i]`: the SiLU-gated feed-forward's
/// product, vectorized (AVX2 where the CPU has it), the same bits as
/// [`silu`] element by element.
///
/// # Panics
/// If the lengths differ.
pub fn silu_gate_in_place(gate: &mut [f32], up: &[f32]) {
    gate_in_place(gate, up, Gate::Silu);
}

/// `gate[i] = relu2(gate[i]) · up[i]` (BitNet b1.58's feed-forward), as
/// [`silu_gate_in_place`].
///
/// # Panics
/// If the lengths differ.
pub fn relu2_gate_in_place(gate: &mut [f32], up: &[f32]) {
    gate_in_place(gate, up, Gate::Relu2);
}

#[derive(Clone, Copy)]
enum Gate {
    Silu,
    Relu2,
}

fn gate_in_place(gate: &mut [f32], up: &[f32], act: Gate) {
    assert_eq!(gate.len(), up.len(), "gate and up lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the feature the function was compiled for is present.
        unsafe { gate_avx2(gate, up, act) };
        return;
    }
    gate_generic(gate, up, act);
}

#[inline(always)]
fn gate_generic(gate: &mut [f32], up: &[f32], act: Gate) {
    // One loop per activation, each with its function inlined.
    match act {
        Gate::Silu => gate.iter_mut().zip(up).for_each(|(g, u)| *g = silu(*g) * u),
        Gate::Relu2 => gate
            .iter_mut()
            .zip(up)
            .for_each(|(g, u)| *g = relu2(*g) * u),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gate_avx2(gate: &mut [f32], up: &[f32], act: Gate) {
    gate_generic(gate, up, act);
}

/// Dot product with eight independent accumulators (vectorizes; the order
/// differs from a sequential sum by rounding only).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum with eight independent accumulators, like [`dot`].
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let blocks = xs.chunks_exact(8);
    let tail: f32 = blocks.remainder().iter().sum();
    for x in blocks {
        for k in 0..8 {
            acc[k] += x[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element (`-inf` for an empty slice), over eight lanes: a single
/// running `max` is a latency-bound chain.
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let blocks = xs.chunks_exact(8);
    let tail = blocks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for x in blocks {
        for k in 0..8 {
            acc[k] = acc[k].max(x[k]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// The largest |v| (0 for an empty slice), over eight lanes like [`max`];
/// exact, since max does not round. NaN is skipped, as `f32::max` skips it.
#[inline]
pub fn abs_max(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let blocks = xs.chunks_exact(8);
    let tail = blocks
        .remainder()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    for x in blocks {
        for k in 0..8 {
            acc[k] = acc[k].max(x[k].abs());
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `Σ a ⊙ b ⊙ c` with eight accumulators, like [`dot`].
#[inline]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb, cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let tail: f32 = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .map(|((x, y), z)| x * y * z)
    .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k] * z[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_table_matches_formula_and_in_place() {
        let t = RopeTable::new(4, 10_000.0, [0, 3]);
        assert_eq!(t.len(), 2);
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut y = [0.0; 4];
        t.rotate(&x, 0, &mut y);
        assert_eq!(y, x);
        t.rotate(&x, 1, &mut y);
        let f1 = 1.0 / 10_000f32.powf(0.5);
        let (a0, a1) = (3.0f32, 3.0 * f1);
        let want = [
            1.0 * a0.cos() - 3.0 * a0.sin(),
            2.0 * a1.cos() - 4.0 * a1.sin(),
            3.0 * a0.cos() + 1.0 * a0.sin(),
            4.0 * a1.cos() + 2.0 * a1.sin(),
        ];
        assert_eq!(y, want);
        let mut z = x;
        t.rotate_in_place(&mut z, 1);
        assert_eq!(z, y);
    }

    #[test]
    fn softmax_and_helpers() {
        let mut r = [0.0, f32::NEG_INFINITY, 0.0];
        assert!(softmax_in_place(&mut r));
        assert_eq!(r, [0.5, 0.0, 0.5]);
        let mut m = [f32::NEG_INFINITY; 2];
        assert!(!softmax_in_place(&mut m));
        assert_eq!(relu2(-2.0), 0.0);
        assert_eq!(relu2(3.0), 9.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!(silu(f32::NAN).is_nan());
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert_eq!(silu(-200.0), 0.0);
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }

    /// Softmax against an f64 evaluation for rows of 1-70 scores (with and
    /// without a tail of the eight lanes, masked `-inf` entries, scores far
    /// below the largest): within 5e-7 of each probability; a NaN score
    /// makes the row NaN.
    #[test]
    fn softmax_is_accurate() {
        for n in 1usize..70 {
            let row: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    3 => f32::NEG_INFINITY,
                    7 => -120.0,
                    _ => (i as f32 * 1.37).sin() * 9.0,
                })
                .collect();
            let top = row
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(v)));
            let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - top).exp()).collect();
            let total: f64 = e.iter().sum();
            let mut got = row.clone();
            assert!(softmax_in_place(&mut got));
            for (g, e) in got.iter().zip(&e) {
                assert!(
                    (f64::from(*g) - e / total).abs() <= 5e-7,
                    "n = {n}: {g} vs {}",
                    e / total
                );
            }
        }
        let mut nan = [0.0, f32::NAN, 1.0];
        softmax_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// SiLU against an f64 evaluation: within 4e-7 relative (a few ulp)
    /// over [-80, 80] where the result is a normal float.
    #[test]
    fn silu_is_accurate() {
        for i in -160_000..=160_000 {
            let x = i as f32 * 5e-4;
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(silu(x));
            let tol = 4e-7 * want.abs().max(f64::from(f32::MIN_POSITIVE));
            assert!((got - want).abs() <= tol, "silu({x}) = {got}, want {want}");
        }
    }

    /// The gated products, vectorized (this CPU's version), equal the
    /// scalar functions element by element, bit for bit, with and without
    /// a tail, NaN and infinities included.
    #[test]
    fn gates_equal_the_scalar_functions() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 67] {
            let mut gate: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.731).sin() * 12.0 - 1.0)
                .collect();
            if n > 3 {
                gate[1] = f32::NAN;
                gate[2] = f32::INFINITY;
                gate[3] = -95.0;
            }
            let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos() * 3.0).collect();
            for (act, f, scalar) in [
                (
                    Gate::Silu,
                    silu_gate_in_place as fn(&mut [f32], &[f32]),
                    silu as fn(f32) -> f32,
                ),
                (Gate::Relu2, relu2_gate_in_place, relu2),
            ] {
                let mut got = gate.clone();
                f(&mut got, &up);
                let want: Vec<u32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(&g, &u)| (scalar(g) * u).to_bits())
                    .collect();
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want,
                    "n = {n}"
                );
                let mut generic = gate.clone();
                gate_generic(&mut generic, &up, act);
                assert_eq!(
                    generic.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want,
                    "n = {n}"
                );
            }
        }
    }

    /// The lane reductions on lengths with and without a tail: integers,
    /// so every order of summation gives the same exact result.
    #[test]
    fn lane_reductions() {
        for n in [0usize, 3, 8, 19] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 - 9.5).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
            let want_sum: f32 = a.iter().sum();
            assert_eq!(sum(&a), want_sum, "sum of {n}");
            let want_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), want_max, "max of {n}");
            let want_abs = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(abs_max(&a), want_abs, "abs_max of {n}");
            let want3: f32 = (0..n).map(|i| a[i] * b[i] * b[i]).sum();
            assert_eq!(dot3(&a, &b, &b), want3, "dot3 of {n}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        assert_eq!(abs_max(&[-7.0; 9]), 7.0);
    }

    #[test]
    fn rms_norm_rows() {
        let mut out = [0.0; 4];
        rms_norm_into(&[3.0, 4.0, 0.0, 0.0], &[1.0, 2.0], 1e-5, &mut out);
        let inv = 1.0 / (12.5f32 + 1e-5).sqrt();
        assert_eq!(out, [3.0 * inv, 4.0 * inv * 2.0, 0.0, 0.0]);
    }

    /// Every length around the eight lanes and the tail, against an f64 sum;
    /// a dropped tail element or lane would be off by far more than rounding.
    #[test]
    fn sum_of_squares_equals_the_exact_sum() {
        for n in 0..40 {
            let x: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37 - 5.0).sin() * 3.0 + 1.0)
                .collect();
            let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let got = f64::from(sum_of_squares(&x));
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n {n}: {got} vs {want}"
            );
        }
    }
}
