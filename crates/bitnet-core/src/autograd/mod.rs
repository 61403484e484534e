//! A small reverse-mode autograd tape over row-major `f32` buffers: what a
//! BitNet transformer needs to train with quantization-aware training.
//!
//! A [`Tape`] records each op's output value and how to push a gradient back
//! to its inputs; [`Tape::backward`] replays the records in reverse and
//! returns [`Grads`]. Values are plain `Vec<f32>` with a shape; 2-D ops read a
//! tensor as rows of its last dimension (`[rows, width]`), which is how the
//! model lays out its activations (`[batch * seq, hidden]`).
//!
//! Ops: [`Tape::matmul`], [`Tape::linear`] (`x · wᵀ`), [`Tape::add`],
//! [`Tape::mul`], [`Tape::scale`], [`Tape::sum`], [`Tape::rms_norm`],
//! [`Tape::rope`] (HF rotate-half, as inference), [`Tape::softmax`],
//! [`Tape::causal_attention`] (fused, GQA), [`Tape::silu`], [`Tape::relu2`],
//! [`Tape::embedding`], [`Tape::cross_entropy`], [`Tape::kl_distill`], and
//! the straight-through quantizers [`Tape::act_quant_ste`] (per-token int8
//! absmax) and [`Tape::weight_quant_ste`] (per-tensor absmean ternary) with
//! the `x + λ (q(x) − x).detach()` semantics of NUMERICS.md.
//!
//! Matmuls go through faer on the tape's [`Parallelism`]; attention runs one
//! task per head on the same pool. A fully quantized linear (both operands
//! straight from the quantizers at `λ = 1`) can instead run on integer
//! kernels: the quantizers keep their integer codes, and a tape built with
//! [`Tape::with_quantized_linear`] hands them to a [`QuantizedLinear`]
//! (the ternary kernels live in `bitnet-quant`, above this crate).
//!
//! ```
//! use bitnet_core::autograd::Tape;
//! use bitnet_core::Parallelism;
//!
//! let mut tape = Tape::new(Parallelism::Sequential);
//! let x = tape.leaf(vec![1.0, 2.0, 3.0, 4.0], &[2, 2], true)?;
//! let w = tape.leaf(vec![0.5, -1.0, 2.0, 0.0], &[2, 2], true)?;
//! let y = tape.linear(x, w)?;
//! let loss = tape.sum(y)?;
//! let grads = tape.backward(loss)?;
//! assert_eq!(grads.get(x).unwrap(), &[2.5, -1.0, 2.5, -1.0]);
//! # Ok::<(), bitnet_core::Error>(())
//! ```

mod kernels;
mod pool;
#[cfg(test)]
mod tests;

pub use kernels::AttnDims;
pub use pool::BufferPool;

use crate::error::{Error, Result};
use crate::ops::{OpKind, exp_in_place, round_half_even_small, rows};
use crate::parallel::Parallelism;
use crate::shape::Shape;
use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Target id that [`Tape::cross_entropy`] skips (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Handle of a value on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// How a node was made, with whatever its backward needs.
enum Op<'p> {
    Leaf,
    Matmul(Var, Var),
    Linear(Var, Var),
    Add(Var, Var),
    Mul(Var, Var),
    Scale(Var, f32),
    Sum(Var),
    RmsNorm {
        x: Var,
        w: Var,
        inv: Vec<f32>,
    },
    Rope {
        x: Var,
        table: Arc<RopeTable>,
        seq: usize,
        head_dim: usize,
    },
    Softmax(Var),
    Attention {
        q: Var,
        k: Var,
        v: Var,
        probs: Vec<f32>,
        dims: AttnDims,
    },
    Silu(Var),
    Relu2(Var),
    Embedding {
        table: Var,
        ids: Vec<u32>,
    },
    CrossEntropy {
        logits: Var,
        targets: Vec<u32>,
        probs: Vec<f32>,
        count: usize,
    },
    KlDistill {
        logits: Var,
        teacher: Vec<f32>,
        probs: Vec<f32>,
        temperature: f32,
    },
    Ste {
        x: Var,
        /// The integer codes behind the value, when it is exactly
        /// `code / scale` (`λ = 1`).
        codes: Option<QuantCodes<'p>>,
    },
}

/// Integer codes of a quantized value: `value[r, c] = codes[r, c] / scales[r]`
/// (one scale per row), or `/ scales[0]` for a per-tensor scale.
struct QuantCodes<'p> {
    codes: Cow<'p, [i8]>,
    scales: Cow<'p, [f32]>,
    /// A [`QuantizedLinear`]'s own form of these codes, made once.
    prepared: Option<&'p (dyn Any + Send + Sync)>,
}

/// Rows of integer codes and their scales, as a [`QuantizedLinear`] reads
/// them: `value[r, c] = codes[r * cols + c] / scales[r]` (or `/ scales[0]`
/// when there is one scale).
#[derive(Clone, Copy)]
pub struct QuantizedRows<'a> {
    /// Row-major `[rows, cols]` codes.
    pub codes: &'a [i8],
    /// One scale per row, or one for the whole matrix.
    pub scales: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Codes per row.
    pub cols: usize,
    /// What [`QuantizedLinear::prepare`] made of these codes, when they
    /// come from a [`TernaryWeight`] that was prepared.
    pub prepared: Option<&'a (dyn Any + Send + Sync)>,
}

impl fmt::Debug for QuantizedRows<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantizedRows")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("scales", &self.scales.len())
            .field("prepared", &self.prepared.is_some())
            .finish()
    }
}

/// Integer kernels for a fully quantized linear layer: int8 activation
/// codes times ternary weight codes.
pub trait QuantizedLinear: Sync {
    /// Writes `out[i, j] = Σ_c x[i, c] · w[j, c]` over the dequantized values
    /// (`[x.rows, w.rows]`, row-major), computed exactly in integers and
    /// then scaled; `w` has one scale. Returns `false`, leaving `out` to be
    /// overwritten, when it cannot (the tape then runs the float GEMM).
    fn forward(
        &self,
        x: QuantizedRows<'_>,
        w: QuantizedRows<'_>,
        out: &mut [f32],
        par: Parallelism<'_>,
    ) -> bool;

    /// The kernel's own form of a weight's codes (`w` has one scale), made
    /// once and handed back in [`QuantizedRows::prepared`] to every
    /// [`forward`](QuantizedLinear::forward) that reads this weight, so a
    /// step's shards do not each repack it. `None` (the default) when the
    /// kernel has no such form or refuses the codes.
    fn prepare(&self, w: QuantizedRows<'_>) -> Option<Box<dyn Any + Send + Sync>> {
        let _ = w;
        None
    }
}

/// A weight's per-tensor absmean ternary quantization at `λ = 1` (the
/// value `code / scale`, the codes and the scale), made once per optimizer
/// step and read by every tape of that step through
/// [`Tape::weight_quant_shared`], instead of each tape quantizing (and a
/// kernel packing) its own copy.
pub struct TernaryWeight {
    value: Vec<f32>,
    codes: Vec<i8>,
    scale: [f32; 1],
    prepared: Option<Box<dyn Any + Send + Sync>>,
}

impl TernaryWeight {
    /// Quantizes `w` (NUMERICS.md `WeightQuant`): `s = 1 / max(mean|w|, 1e-5)`,
    /// codes `clamp(round(w s), -1, 1)`.
    pub fn new(w: &[f32]) -> Self {
        let s = weight_scale(w);
        let codes: Vec<i8> = w.iter().map(|&v| ternary_code(v, s)).collect();
        // `code / s` for a code in {-1, 0, 1} is exactly `code · (1 / s)`:
        // one division, not one per weight.
        let inv = 1.0 / s;
        let value = codes.iter().map(|&c| f32::from(c) * inv).collect();
        TernaryWeight {
            value,
            codes,
            scale: [s],
            prepared: None,
        }
    }

    /// Also makes `kernel`'s own form of the codes (`[rows, cols]`), which
    /// its forwards then read instead of repacking them.
    pub fn prepare(&mut self, kernel: &dyn QuantizedLinear, rows: usize, cols: usize) {
        self.prepared = None;
        if rows * cols == self.codes.len() {
            self.prepared = kernel.prepare(QuantizedRows {
                codes: &self.codes,
                scales: &self.scale,
                rows,
                cols,
                prepared: None,
            });
        }
    }

    /// The dequantized value `code / scale`.
    pub fn value(&self) -> &[f32] {
        &self.value
    }

    /// The ternary codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// The scale `s` (`value = code / s`).
    pub fn scale(&self) -> f32 {
        self.scale[0]
    }
}

impl fmt::Debug for TernaryWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TernaryWeight")
            .field("len", &self.codes.len())
            .field("scale", &self.scale[0])
            .field("prepared", &self.prepared.is_some())
            .finish()
    }
}

struct Node<'p> {
    /// Borrowed for a leaf that reads a parameter in place, or a shared
    /// [`TernaryWeight`]'s value.
    value: Cow<'p, [f32]>,
    dims: Vec<usize>,
    op: Op<'p>,
    needs_grad: bool,
}

/// Records operations for one forward pass; [`Tape::backward`] differentiates it.
pub struct Tape<'p> {
    nodes: Vec<Node<'p>>,
    par: Parallelism<'p>,
    quantized_linear: Option<&'p dyn QuantizedLinear>,
    /// RoPE angles by `(seq, head_dim, θ bits)`: every layer's queries and
    /// keys share one table instead of taking `cos`/`sin` again.
    rope_tables: Vec<((usize, usize, u32), Arc<RopeTable>)>,
    /// Where the tape's buffers come from and, through
    /// [`Tape::into_pool`], go back to.
    pool: BufferPool,
}

/// `cos` and `sin` of RoPE's angles, `[seq, head_dim / 2]`.
struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Gradients from [`Tape::backward`]: one optional buffer per leaf.
pub struct Grads {
    grads: Vec<Option<Vec<f32>>>,
}

impl Grads {
    /// The gradient of the leaf `v`, or `None` when nothing that needs a
    /// gradient flowed through it (or `v` is not a leaf: intermediate
    /// gradients are freed during the reverse pass).
    pub fn get(&self, v: Var) -> Option<&[f32]> {
        self.grads.get(v.0).and_then(|g| g.as_deref())
    }

    /// Takes ownership of the gradient of `v`.
    pub fn take(&mut self, v: Var) -> Option<Vec<f32>> {
        self.grads.get_mut(v.0).and_then(Option::take)
    }
}

fn shape_err(op: OpKind, a: &[usize], b: &[usize], reason: &'static str) -> Error {
    Error::ShapeMismatch {
        op,
        lhs: Shape::from(a.to_vec()),
        rhs: Shape::from(b.to_vec()),
        reason,
    }
}

fn invalid(op: OpKind, msg: String) -> Error {
    Error::InvalidArgument { op, msg }
}

/// Per-token int8 absmax fake quantization of one row (NUMERICS.md
/// `ActQuant`): `s = 127 / max(absmax, 1e-5)`, `clamp(round(x s), -128, 127) / s`.
pub fn act_quant_row(row: &[f32], out: &mut [f32]) {
    let s = act_scale(row);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = act_code(v, s) / s;
    }
}

/// [`act_quant_row`] that also writes the int8 codes (`out = codes / s`)
/// and returns the scale `s`.
fn act_quant_row_codes(row: &[f32], codes: &mut [i8], out: &mut [f32]) -> f32 {
    let s = act_scale(row);
    for ((o, c), &v) in out.iter_mut().zip(codes.iter_mut()).zip(row) {
        let q = act_code(v, s);
        *c = q as i8;
        *o = q / s;
    }
    s
}

/// The per-token scale `127 / max(absmax, 1e-5)`.
fn act_scale(row: &[f32]) -> f32 {
    let absmax = rows::abs_max(row);
    127.0 / absmax.max(1e-5)
}

/// `clamp(round(v s), -128, 127)`; |v s| <= 127 by the choice of s.
#[inline(always)]
fn act_code(v: f32, s: f32) -> f32 {
    round_half_even_small(v * s).clamp(-128.0, 127.0)
}

/// Writes `v` into a gradient buffer just taken from the pool (`fresh`:
/// stale contents, every element written) or adds it to one that holds a
/// partial sum: no zero-fill pass before the first contribution.
#[inline(always)]
fn put(d: &mut f32, v: f32, fresh: bool) {
    if fresh {
        *d = v;
    } else {
        *d += v;
    }
}

/// The absmean scale `s = 1 / max(mean |W|, 1e-5)`.
fn weight_scale(w: &[f32]) -> f32 {
    // Eight running sums, not one: a single f32 chain is latency-bound
    // (a quarter of the loop's speed) and rounds worse on 10^6 weights.
    let mut lanes = [0.0f32; 8];
    let mut blocks = w.chunks_exact(8);
    for b in &mut blocks {
        for (l, v) in lanes.iter_mut().zip(b) {
            *l += v.abs();
        }
    }
    let tail: f32 = blocks.remainder().iter().map(|v| v.abs()).sum();
    let mean = (lanes.iter().sum::<f32>() + tail) / w.len().max(1) as f32;
    1.0 / mean.max(1e-5)
}

/// Per-tensor absmean ternary fake quantization (NUMERICS.md `WeightQuant`):
/// `s = 1 / max(mean |W|, 1e-5)`, `clamp(round(W s), -1, 1) / s`.
pub fn weight_quant(w: &[f32], out: &mut [f32]) {
    let s = weight_scale(w);
    for (o, &v) in out.iter_mut().zip(w) {
        *o = f32::from(ternary_code(v, s)) / s;
    }
}

/// `clamp(round(v s), -1, 1)` with ties to even: 1 above one half, -1 below
/// minus one half, else 0. Two compares vectorize where a rounding would
/// not; a NaN scale (from a NaN or infinite weight) still makes every
/// value `code / s` NaN.
#[inline(always)]
fn ternary_code(v: f32, s: f32) -> i8 {
    let y = v * s;
    i8::from(y > 0.5) - i8::from(y < -0.5)
}

impl<'p> Tape<'p> {
    /// An empty tape whose matmuls and attention run on `par`.
    pub fn new(par: Parallelism<'p>) -> Self {
        Tape {
            nodes: Vec::new(),
            par,
            quantized_linear: None,
            rope_tables: Vec::new(),
            pool: BufferPool::new(),
        }
    }

    /// An empty tape whose fully quantized linears run on `kernel`
    /// (everything else as [`Tape::new`]).
    pub fn with_quantized_linear(par: Parallelism<'p>, kernel: &'p dyn QuantizedLinear) -> Self {
        Tape {
            nodes: Vec::new(),
            par,
            quantized_linear: Some(kernel),
            rope_tables: Vec::new(),
            pool: BufferPool::new(),
        }
    }

    /// This tape, taking its buffers from `pool` (one
    /// [`into_pool`](Tape::into_pool) gave back after a step on the same
    /// shapes) instead of allocating them.
    pub fn with_pool(mut self, pool: BufferPool) -> Self {
        self.pool = pool;
        self
    }

    /// Ends the tape, giving the buffers it owns (values and saved scratch;
    /// dead gradients went back during [`backward`](Tape::backward)) to its
    /// pool for the next tape.
    pub fn into_pool(self) -> BufferPool {
        let mut pool = self.pool;
        for node in self.nodes {
            if let Cow::Owned(v) = node.value {
                pool.give(v);
            }
            // Only what came from the pool goes back: other scratch (a
            // scale per row, a teacher's logits) would sit there unasked.
            match node.op {
                Op::Attention { probs, .. } | Op::CrossEntropy { probs, .. } => pool.give(probs),
                Op::Ste {
                    codes:
                        Some(QuantCodes {
                            codes: Cow::Owned(c),
                            ..
                        }),
                    ..
                } => pool.give_i8(c),
                _ => {}
            }
        }
        pool
    }

    /// The codes behind `v` when it came from a quantizer at `λ = 1`.
    fn codes(&self, v: Var, rows: usize, cols: usize) -> Option<QuantizedRows<'_>> {
        match &self.nodes[v.0].op {
            Op::Ste { codes: Some(c), .. } => Some(QuantizedRows {
                codes: &c.codes,
                scales: &c.scales,
                rows,
                cols,
                prepared: c.prepared,
            }),
            _ => None,
        }
    }

    /// Number of recorded values.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The value of `v`.
    pub fn value(&self, v: Var) -> &[f32] {
        &self.nodes[v.0].value
    }

    /// The shape of `v`.
    pub fn dims(&self, v: Var) -> &[usize] {
        &self.nodes[v.0].dims
    }

    /// The single element of a one-element value (a loss).
    pub fn scalar(&self, v: Var) -> f32 {
        self.nodes[v.0].value[0]
    }

    fn push(&mut self, value: Vec<f32>, dims: Vec<usize>, op: Op<'p>, needs_grad: bool) -> Var {
        self.push_cow(Cow::Owned(value), dims, op, needs_grad)
    }

    fn push_cow(
        &mut self,
        value: Cow<'p, [f32]>,
        dims: Vec<usize>,
        op: Op<'p>,
        needs_grad: bool,
    ) -> Var {
        self.nodes.push(Node {
            value,
            dims,
            op,
            needs_grad,
        });
        Var(self.nodes.len() - 1)
    }

    fn ng(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    fn rows_width(&self, v: Var) -> (usize, usize) {
        let d = &self.nodes[v.0].dims;
        let w = d.last().copied().unwrap_or(1);
        (self.nodes[v.0].value.len() / w.max(1), w)
    }

    /// `f` over `a`'s elements, in parallel chunks when large.
    fn map(&mut self, a: Var, f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
        let va = &self.nodes[a.0].value;
        let mut out = self.pool.take(va.len());
        kernels::for_chunks(self.par, &mut out, |o, chunk| {
            for (d, &x) in chunk.iter_mut().zip(&va[o..]) {
                *d = f(x);
            }
        });
        out
    }

    /// `f` over pairs of `a`'s and `b`'s elements (equal lengths).
    fn zip_map(&mut self, a: Var, b: Var, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
        let (va, vb) = (&self.nodes[a.0].value, &self.nodes[b.0].value);
        let mut out = self.pool.take(va.len());
        kernels::for_chunks(self.par, &mut out, |o, chunk| {
            for ((d, &x), &y) in chunk.iter_mut().zip(&va[o..]).zip(&vb[o..]) {
                *d = f(x, y);
            }
        });
        out
    }

    /// A leaf value (a parameter when `requires_grad`, else a constant).
    pub fn leaf(&mut self, value: Vec<f32>, dims: &[usize], requires_grad: bool) -> Result<Var> {
        self.leaf_cow(Cow::Owned(value), dims, requires_grad)
    }

    /// A leaf that reads `value` in place (a parameter, without copying it
    /// onto the tape).
    pub fn leaf_borrowed(
        &mut self,
        value: &'p [f32],
        dims: &[usize],
        requires_grad: bool,
    ) -> Result<Var> {
        self.leaf_cow(Cow::Borrowed(value), dims, requires_grad)
    }

    fn leaf_cow(
        &mut self,
        value: Cow<'p, [f32]>,
        dims: &[usize],
        requires_grad: bool,
    ) -> Result<Var> {
        let n: usize = dims.iter().product();
        if n != value.len() {
            return Err(Error::ElementCountMismatch {
                op: OpKind::FromVec,
                shape: Shape::from(dims.to_vec()),
                expected: n,
                got: value.len(),
            });
        }
        Ok(self.push_cow(value, dims.to_vec(), Op::Leaf, requires_grad))
    }

    /// Matrix product `[m,k] · [k,n]`.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (da, db) = (self.dims(a).to_vec(), self.dims(b).to_vec());
        let (&[m, k], &[k2, n]) = (da.as_slice(), db.as_slice()) else {
            return Err(shape_err(
                OpKind::Matmul,
                &da,
                &db,
                "both operands must be 2-D",
            ));
        };
        if k != k2 {
            return Err(shape_err(
                OpKind::Matmul,
                &da,
                &db,
                "inner dimensions differ",
            ));
        }
        let mut out = self.pool.take(m * n);
        let (va, vb) = (&self.nodes[a.0].value, &self.nodes[b.0].value);
        self.par
            .run(|p| kernels::gemm(&mut out, va, false, vb, false, (m, k, n), false, p));
        let ng = self.ng(a) || self.ng(b);
        Ok(self.push(out, vec![m, n], Op::Matmul(a, b), ng))
    }

    /// Linear layer without bias: `x · wᵀ` for `x` of rows `[.., in]` and
    /// `w` of shape `[out, in]`; the result keeps `x`'s leading dims.
    pub fn linear(&mut self, x: Var, w: Var) -> Result<Var> {
        let (m, k) = self.rows_width(x);
        let dw = self.dims(w).to_vec();
        let (&[n, k2], true) = (dw.as_slice(), dw.len() == 2) else {
            return Err(shape_err(
                OpKind::Matmul,
                self.dims(x),
                &dw,
                "weight must be 2-D [out, in]",
            ));
        };
        if k != k2 {
            return Err(shape_err(
                OpKind::Matmul,
                self.dims(x),
                &dw,
                "x width must equal weight in_features",
            ));
        }
        // Both paths write every element.
        let mut out = self.pool.take(m * n);
        let integer = match (
            self.quantized_linear,
            self.codes(x, m, k),
            self.codes(w, n, k),
        ) {
            (Some(kernel), Some(cx), Some(cw)) if cx.scales.len() == m && cw.scales.len() == 1 => {
                kernel.forward(cx, cw, &mut out, self.par)
            }
            _ => false,
        };
        if !integer {
            let (vx, vw) = (&self.nodes[x.0].value, &self.nodes[w.0].value);
            self.par
                .run(|p| kernels::gemm(&mut out, vx, false, vw, true, (m, k, n), false, p));
        }
        let mut dims = self.dims(x).to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        let ng = self.ng(x) || self.ng(w);
        Ok(self.push(out, dims, Op::Linear(x, w), ng))
    }

    fn same_shape(&self, op: OpKind, a: Var, b: Var) -> Result<()> {
        if self.dims(a) != self.dims(b) {
            return Err(shape_err(
                op,
                self.dims(a),
                self.dims(b),
                "shapes must be equal",
            ));
        }
        Ok(())
    }

    /// Elementwise `a + b` (equal shapes).
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.same_shape(OpKind::Add, a, b)?;
        let out = self.zip_map(a, b, |x, y| x + y);
        let ng = self.ng(a) || self.ng(b);
        Ok(self.push(out, self.dims(a).to_vec(), Op::Add(a, b), ng))
    }

    /// Elementwise `a * b` (equal shapes).
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.same_shape(OpKind::Mul, a, b)?;
        let out = self.zip_map(a, b, |x, y| x * y);
        let ng = self.ng(a) || self.ng(b);
        Ok(self.push(out, self.dims(a).to_vec(), Op::Mul(a, b), ng))
    }

    /// `a * s` for a constant `s`.
    pub fn scale(&mut self, a: Var, s: f32) -> Result<Var> {
        let out = self.map(a, |x| x * s);
        let ng = self.ng(a);
        Ok(self.push(out, self.dims(a).to_vec(), Op::Scale(a, s), ng))
    }

    /// Sum of all elements (accumulated in f64), shape `[1]`.
    pub fn sum(&mut self, a: Var) -> Result<Var> {
        let s = self.value(a).iter().map(|&x| x as f64).sum::<f64>() as f32;
        let ng = self.ng(a);
        Ok(self.push(vec![s], vec![1], Op::Sum(a), ng))
    }

    /// RMSNorm over the last dimension: `x · 1/sqrt(mean(x²) + eps) · w`, in
    /// the order of [`rows::rms_norm_into`](crate::ops::rows::rms_norm_into).
    pub fn rms_norm(&mut self, x: Var, w: Var, eps: f32) -> Result<Var> {
        let (rows, h) = self.rows_width(x);
        if self.dims(w) != [h] {
            return Err(shape_err(
                OpKind::RmsNorm,
                self.dims(x),
                self.dims(w),
                "weight must be [last dim of x]",
            ));
        }
        let (vx, vw): (&[f32], &[f32]) = (&self.nodes[x.0].value, &self.nodes[w.0].value);
        let mut out = self.pool.take(vx.len());
        let inv = kernels::for_rows(self.par, &mut out, h, |r0, chunk| {
            let mut inv = Vec::with_capacity(chunk.len() / h);
            for (row, dst) in vx[r0 * h..].chunks_exact(h).zip(chunk.chunks_exact_mut(h)) {
                // The inference engine's order (`rows::rms_norm_into`): an
                // export's logits match the trainer's eval to rounding only
                // when both sum alike, else an activation code can flip.
                let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
                let r = 1.0 / (ms + eps).sqrt();
                inv.push(r);
                for ((d, &v), &g) in dst.iter_mut().zip(row).zip(vw) {
                    *d = v * r * g;
                }
            }
            inv
        })
        .concat();
        debug_assert_eq!(inv.len(), rows);
        let ng = self.ng(x) || self.ng(w);
        Ok(self.push(out, self.dims(x).to_vec(), Op::RmsNorm { x, w, inv }, ng))
    }

    /// RoPE, HF rotate-half convention (dims `i` and `i + d/2` pair up), on
    /// rows of `[batch * seq, heads * head_dim]`: row `r` sits at position
    /// `r % seq`. Angles as inference computes them (`1 / θ^(2i/d)`, f32).
    pub fn rope(&mut self, x: Var, seq: usize, head_dim: usize, theta: f32) -> Result<Var> {
        let (rows, width) = self.rows_width(x);
        if head_dim == 0
            || !head_dim.is_multiple_of(2)
            || !width.is_multiple_of(head_dim)
            || seq == 0
            || !rows.is_multiple_of(seq)
        {
            return Err(invalid(
                OpKind::Rope,
                format!(
                    "rows {rows} x width {width} do not split into seq {seq} and even head_dim {head_dim}"
                ),
            ));
        }
        let half = head_dim / 2;
        let table = self.rope_table(seq, head_dim, theta);
        let (cos, sin) = (&table.cos, &table.sin);
        let mut out = self.pool.take_copy(&self.nodes[x.0].value);
        kernels::for_rows(self.par, &mut out, width, |r0, chunk| {
            for (r, row) in (r0..).zip(chunk.chunks_exact_mut(width)) {
                let (c, s) = (
                    &cos[(r % seq) * half..][..half],
                    &sin[(r % seq) * half..][..half],
                );
                for head in row.chunks_exact_mut(head_dim) {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((x1, x2), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
                        let (a, b) = (*x1, *x2);
                        *x1 = a * c - b * s;
                        *x2 = b * c + a * s;
                    }
                }
            }
        });
        let ng = self.ng(x);
        Ok(self.push(
            out,
            self.dims(x).to_vec(),
            Op::Rope {
                x,
                table,
                seq,
                head_dim,
            },
            ng,
        ))
    }

    fn rope_table(&mut self, seq: usize, head_dim: usize, theta: f32) -> Arc<RopeTable> {
        let key = (seq, head_dim, theta.to_bits());
        if let Some((_, t)) = self.rope_tables.iter().find(|(k, _)| *k == key) {
            return Arc::clone(t);
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(seq * half),
            Vec::with_capacity(seq * half),
        );
        for p in 0..seq {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let table = Arc::new(RopeTable { cos, sin });
        self.rope_tables.push((key, Arc::clone(&table)));
        table
    }

    /// Softmax over the last dimension.
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        let (_, w) = self.rows_width(x);
        let mut out = self.pool.take_copy(&self.nodes[x.0].value);
        for row in out.chunks_exact_mut(w) {
            crate::ops::rows::softmax_in_place(row);
        }
        let ng = self.ng(x);
        Ok(self.push(out, self.dims(x).to_vec(), Op::Softmax(x), ng))
    }

    /// Causal scaled-dot-product attention (`1/sqrt(head_dim)`, f32 softmax),
    /// grouped-query: `q` rows `[batch*seq, heads*head_dim]`, `k`/`v` rows
    /// `[batch*seq, kv_heads*head_dim]`. Output has `q`'s shape.
    pub fn causal_attention(&mut self, q: Var, k: Var, v: Var, dims: AttnDims) -> Result<Var> {
        let d = dims;
        let bad = |msg: String| Err(invalid(OpKind::Attention, msg));
        if d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) || d.seq == 0 || d.head_dim == 0 {
            return bad(format!("invalid attention dims {d:?}"));
        }
        let rows = d.batch * d.seq;
        if self.value(q).len() != rows * d.heads * d.head_dim
            || self.value(k).len() != rows * d.kv_heads * d.head_dim
            || self.value(v).len() != self.value(k).len()
        {
            return bad(format!(
                "q/k/v shapes {:?} {:?} {:?} do not match {d:?}",
                self.dims(q),
                self.dims(k),
                self.dims(v)
            ));
        }
        let mut out = self.pool.take(self.nodes[q.0].value.len());
        let mut probs = self.pool.take(d.batch * d.heads * d.seq * d.seq);
        kernels::attention_forward(
            &self.nodes[q.0].value,
            &self.nodes[k.0].value,
            &self.nodes[v.0].value,
            d,
            self.par,
            &mut out,
            &mut probs,
        );
        let ng = self.ng(q) || self.ng(k) || self.ng(v);
        let shape = self.dims(q).to_vec();
        Ok(self.push(
            out,
            shape,
            Op::Attention {
                q,
                k,
                v,
                probs,
                dims: d,
            },
            ng,
        ))
    }

    /// `x · sigmoid(x)`.
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        let out = self.map(x, crate::ops::rows::silu);
        let ng = self.ng(x);
        Ok(self.push(out, self.dims(x).to_vec(), Op::Silu(x), ng))
    }

    /// `relu(x)²`.
    pub fn relu2(&mut self, x: Var) -> Result<Var> {
        let out = self.map(x, crate::ops::rows::relu2);
        let ng = self.ng(x);
        Ok(self.push(out, self.dims(x).to_vec(), Op::Relu2(x), ng))
    }

    /// Rows of `table` (`[vocab, width]`) for `ids`, shape `[ids.len(), width]`.
    pub fn embedding(&mut self, table: Var, ids: &[u32]) -> Result<Var> {
        let dt = self.dims(table).to_vec();
        let &[vocab, width] = dt.as_slice() else {
            return Err(invalid(
                OpKind::Embedding,
                format!("table must be 2-D, got {dt:?}"),
            ));
        };
        if let Some((position, &id)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= vocab)
        {
            return Err(Error::TokenIdOutOfRange {
                op: OpKind::Embedding,
                id,
                position,
                vocab,
            });
        }
        let tv = &self.nodes[table.0].value;
        let mut out = self.pool.take(ids.len() * width);
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(width.max(1))) {
            dst.copy_from_slice(&tv[id as usize * width..][..width]);
        }
        let ng = self.ng(table);
        Ok(self.push(
            out,
            vec![ids.len(), width],
            Op::Embedding {
                table,
                ids: ids.to_vec(),
            },
            ng,
        ))
    }

    /// Mean cross-entropy of `logits` rows `[n, vocab]` against `targets`
    /// (`n` ids; [`IGNORE_INDEX`] rows are skipped), shape `[1]`. Computed
    /// in f32 with a log-sum-exp per row, like PyTorch's `cross_entropy`.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[u32]) -> Result<Var> {
        let (n, vocab) = self.rows_width(logits);
        if targets.len() != n {
            return Err(invalid(
                OpKind::CrossEntropy,
                format!("{} targets for {n} logit rows", targets.len()),
            ));
        }
        if let Some((position, &id)) = targets
            .iter()
            .enumerate()
            .find(|&(_, &t)| t != IGNORE_INDEX && t as usize >= vocab)
        {
            return Err(Error::TokenIdOutOfRange {
                op: OpKind::CrossEntropy,
                id,
                position,
                vocab,
            });
        }
        let lv = &self.nodes[logits.0].value;
        // Rows whose target is ignored are left unwritten: backward skips
        // them too.
        let mut probs = self.pool.take(lv.len());
        // Per-row losses, summed afterwards in row order: the same total
        // for every thread count.
        let losses = kernels::for_rows(self.par, &mut probs, vocab, |r0, chunk| {
            let mut losses = Vec::with_capacity(chunk.len() / vocab);
            for (r, p) in (r0..).zip(chunk.chunks_exact_mut(vocab)) {
                let t = targets[r];
                if t == IGNORE_INDEX {
                    continue;
                }
                let row = &lv[r * vocab..][..vocab];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (q, &x) in p.iter_mut().zip(row) {
                    *q = x - max;
                }
                exp_in_place(p);
                let sum: f32 = p.iter().sum();
                let lse = max + sum.ln();
                losses.push((lse - row[t as usize]) as f64);
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|q| *q *= inv);
            }
            losses
        })
        .concat();
        let (total, count) = (losses.iter().sum::<f64>(), losses.len());
        let loss = if count == 0 {
            0.0
        } else {
            (total / count as f64) as f32
        };
        let ng = self.ng(logits);
        let op = Op::CrossEntropy {
            logits,
            targets: targets.to_vec(),
            probs,
            count,
        };
        Ok(self.push(vec![loss], vec![1], op, ng))
    }

    /// Distillation loss `T² · mean_rows KL(softmax(teacher/T) ‖ softmax(logits/T))`
    /// for a constant float teacher's logits of the same shape (Hinton et al.).
    pub fn kl_distill(&mut self, logits: Var, teacher: &[f32], temperature: f32) -> Result<Var> {
        let (n, vocab) = self.rows_width(logits);
        if teacher.len() != n * vocab || !(temperature.is_finite() && temperature > 0.0) {
            return Err(invalid(
                OpKind::KlDiv,
                format!(
                    "teacher has {} logits for {n}x{vocab}, temperature {temperature}",
                    teacher.len()
                ),
            ));
        }
        let soft = |src: &[f32]| {
            let mut out: Vec<f32> = src.iter().map(|x| x / temperature).collect();
            let mut logp = vec![0.0f32; out.len()];
            for (row, lp) in out
                .chunks_exact_mut(vocab)
                .zip(logp.chunks_exact_mut(vocab))
            {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (x, l) in row.iter_mut().zip(lp.iter_mut()) {
                    *l = *x - max;
                    *x = *l;
                }
                exp_in_place(row);
                let log_sum = row.iter().sum::<f32>().ln();
                for (x, l) in row.iter_mut().zip(lp.iter_mut()) {
                    *l -= log_sum;
                    *x = *l;
                }
                exp_in_place(row);
            }
            (out, logp)
        };
        let (ps, lps) = soft(self.value(logits));
        let (pt, lpt) = soft(teacher);
        let kl: f64 = pt
            .iter()
            .zip(lpt.iter().zip(&lps))
            .map(|(&p, (&lt, &ls))| {
                if p > 0.0 {
                    p as f64 * (lt - ls) as f64
                } else {
                    0.0
                }
            })
            .sum();
        let loss = (kl / n.max(1) as f64) as f32 * temperature * temperature;
        let ng = self.ng(logits);
        let op = Op::KlDistill {
            logits,
            teacher: pt,
            probs: ps,
            temperature,
        };
        Ok(self.push(vec![loss], vec![1], op, ng))
    }

    /// Per-token int8 fake quantization with a straight-through gradient:
    /// `x + λ (q(x) − x)` forward (exactly `q(x)` at `λ = 1`), identity backward.
    pub fn act_quant_ste(&mut self, x: Var, lambda: f32) -> Result<Var> {
        let (_, w) = self.rows_width(x);
        let vx = &self.nodes[x.0].value;
        let mut out = self.pool.take(vx.len());
        if lambda == 1.0 {
            // Keep the codes: a quantized linear can run on them.
            let mut codes = self.pool.take_i8(vx.len());
            let scales = kernels::for_rows_zip(self.par, &mut out, &mut codes, w, |r0, o, c| {
                vx[r0 * w..]
                    .chunks_exact(w)
                    .zip(o.chunks_exact_mut(w))
                    .zip(c.chunks_exact_mut(w))
                    .map(|((row, o), c)| act_quant_row_codes(row, c, o))
                    .collect::<Vec<f32>>()
            })
            .concat();
            let ng = self.ng(x);
            let op = Op::Ste {
                x,
                codes: Some(QuantCodes {
                    codes: Cow::Owned(codes),
                    scales: Cow::Owned(scales),
                    prepared: None,
                }),
            };
            return Ok(self.push(out, self.dims(x).to_vec(), op, ng));
        }
        kernels::for_rows(self.par, &mut out, w, |r0, chunk| {
            for (row, o) in vx[r0 * w..].chunks_exact(w).zip(chunk.chunks_exact_mut(w)) {
                act_quant_row(row, o);
            }
        });
        self.ste(x, out, lambda)
    }

    /// Per-tensor absmean ternary fake quantization with a straight-through
    /// gradient: `w + λ (q(w) − w)` forward, identity backward.
    pub fn weight_quant_ste(&mut self, w: Var, lambda: f32) -> Result<Var> {
        let vw = &self.nodes[w.0].value;
        if lambda == 1.0 {
            let q = TernaryWeight::new(vw);
            let ng = self.ng(w);
            let op = Op::Ste {
                x: w,
                codes: Some(QuantCodes {
                    codes: Cow::Owned(q.codes),
                    scales: Cow::Owned(q.scale.to_vec()),
                    prepared: None,
                }),
            };
            return Ok(self.push(q.value, self.dims(w).to_vec(), op, ng));
        }
        let mut out = self.pool.take(vw.len());
        weight_quant(vw, &mut out);
        self.ste(w, out, lambda)
    }

    /// [`weight_quant_ste`](Tape::weight_quant_ste) at `λ = 1` from a
    /// quantization made beforehand: `q` must be [`TernaryWeight::new`] of
    /// `w`'s current value (the caller's contract; only the size is
    /// checked). The value and codes are read in place.
    pub fn weight_quant_shared(&mut self, w: Var, q: &'p TernaryWeight) -> Result<Var> {
        if q.codes.len() != self.value(w).len() {
            return Err(invalid(
                OpKind::FakeQuant,
                format!(
                    "a quantized weight of {} values for a weight of shape {:?}",
                    q.codes.len(),
                    self.dims(w)
                ),
            ));
        }
        let ng = self.ng(w);
        let op = Op::Ste {
            x: w,
            codes: Some(QuantCodes {
                codes: Cow::Borrowed(&q.codes),
                scales: Cow::Borrowed(&q.scale),
                prepared: q.prepared.as_deref(),
            }),
        };
        Ok(self.push_cow(Cow::Borrowed(&q.value), self.dims(w).to_vec(), op, ng))
    }

    fn ste(&mut self, x: Var, mut q: Vec<f32>, lambda: f32) -> Result<Var> {
        if !(0.0..=1.0).contains(&lambda) {
            return Err(invalid(
                OpKind::FakeQuant,
                format!("lambda {lambda} outside [0, 1]"),
            ));
        }
        if lambda < 1.0 {
            for (o, &v) in q.iter_mut().zip(self.value(x)) {
                *o = v + lambda * (*o - v);
            }
        }
        let ng = self.ng(x);
        Ok(self.push(q, self.dims(x).to_vec(), Op::Ste { x, codes: None }, ng))
    }

    /// Reverse pass from the one-element `loss` (seeded with 1). Gradient
    /// buffers come from, and dead ones go back to, the tape's pool.
    pub fn backward(&mut self, loss: Var) -> Result<Grads> {
        if self.nodes[loss.0].value.len() != 1 {
            return Err(invalid(
                OpKind::Backward,
                format!(
                    "loss must have one element, has shape {:?}",
                    self.dims(loss)
                ),
            ));
        }
        let mut grads = GradBufs {
            slots: (0..self.nodes.len()).map(|_| None).collect(),
            pool: std::mem::take(&mut self.pool),
        };
        grads.slots[loss.0] = Some(vec![1.0]);
        self.reverse(loss, &mut grads);
        self.pool = grads.pool;
        Ok(Grads { grads: grads.slots })
    }

    fn reverse(&self, loss: Var, grads: &mut GradBufs) {
        for i in (0..=loss.0).rev() {
            let Some(g) = grads.slots[i].take() else {
                continue;
            };
            if !self.nodes[i].needs_grad {
                continue;
            }
            // Only leaves' gradients are returned: an intermediate one is
            // dead once pushed to its inputs, and its buffer goes to the
            // pool the next nodes' gradients are taken from, instead of
            // holding every activation's gradient until the end.
            if matches!(self.nodes[i].op, Op::Leaf) {
                grads.slots[i] = Some(g);
            } else if let Some(done) = self.backward_node(i, g, grads) {
                grads.pool.give(done);
            }
        }
    }

    fn acc<'g>(&self, grads: &'g mut GradBufs, v: Var) -> Option<&'g mut Vec<f32>> {
        self.acc_fresh(grads, v).map(|(buf, fresh)| {
            if fresh {
                buf.fill(0.0);
            }
            buf
        })
    }

    /// The gradient buffer of `v`, and whether it was made just now: then
    /// its contents are stale (a spare's) and the caller writes every
    /// element (a GEMM with faer's `Replace`) instead of adding to it.
    fn acc_fresh<'g>(&self, grads: &'g mut GradBufs, v: Var) -> Option<(&'g mut Vec<f32>, bool)> {
        if !self.nodes[v.0].needs_grad {
            return None;
        }
        let fresh = grads.slots[v.0].is_none();
        if fresh {
            let n = self.nodes[v.0].value.len();
            grads.slots[v.0] = Some(grads.pool.take(n));
        }
        grads.slots[v.0].as_mut().map(|b| (b, fresh))
    }

    /// Adds `d` to the gradient of `v`; `d` becomes the buffer when `v`
    /// has none yet (a move instead of a zero-fill and an add).
    fn acc_vec(&self, grads: &mut GradBufs, v: Var, d: Vec<f32>) {
        if self.nodes[v.0].needs_grad {
            match &mut grads.slots[v.0] {
                Some(buf) => {
                    add_into(self.par, buf, &d);
                    grads.pool.give(d);
                }
                slot @ None => *slot = Some(d),
            }
        }
    }

    /// Adds `d` to the gradient of `v` (a copy when `v` has none yet).
    fn acc_slice(&self, grads: &mut GradBufs, v: Var, d: &[f32]) {
        if let Some((buf, fresh)) = self.acc_fresh(grads, v) {
            if fresh {
                buf.copy_from_slice(d);
            } else {
                add_into(self.par, buf, d);
            }
        }
    }

    /// Pushes node `i`'s gradient `g` to its inputs. `g` is consumed: ops
    /// whose gradient passes through unchanged (STE, one side of an add)
    /// hand the buffer itself on instead of copying it.
    ///
    /// Returns `g`'s buffer when it was not handed on, for reuse.
    fn backward_node(&self, i: usize, owned: Vec<f32>, grads: &mut GradBufs) -> Option<Vec<f32>> {
        let mut owned = Some(owned);
        let g = owned.as_deref().unwrap_or_default();
        let node = &self.nodes[i];
        let par = self.par;
        match &node.op {
            Op::Leaf => {}
            &Op::Matmul(a, b) => {
                let (m, n) = (node.dims[0], node.dims[1]);
                let k = self.dims(a)[1];
                let (va, vb) = (self.value(a), self.value(b));
                if let Some((ga, fresh)) = self.acc_fresh(grads, a) {
                    self.par
                        .run(|p| kernels::gemm(ga, g, false, vb, true, (m, n, k), !fresh, p));
                }
                if let Some((gb, fresh)) = self.acc_fresh(grads, b) {
                    self.par
                        .run(|p| kernels::gemm(gb, va, true, g, false, (k, m, n), !fresh, p));
                }
            }
            &Op::Linear(x, w) => {
                let (m, k) = self.rows_width(x);
                let n = self.dims(w)[0];
                let (vx, vw) = (self.value(x), self.value(w));
                if let Some((gx, fresh)) = self.acc_fresh(grads, x) {
                    self.par
                        .run(|p| kernels::gemm(gx, g, false, vw, false, (m, n, k), !fresh, p));
                }
                if self.nodes[w.0].needs_grad {
                    // faer runs `gᵀ · x` with `g` read transposed well
                    // under its speed on row-major operands: transposing
                    // `g` first (a pass over [m, n]) costs less.
                    let mut gt = grads.pool.take(m * n);
                    kernels::transpose_into(par, g, m, n, &mut gt);
                    if let Some((gw, fresh)) = self.acc_fresh(grads, w) {
                        self.par.run(|p| {
                            kernels::gemm(gw, &gt, false, vx, false, (n, m, k), !fresh, p)
                        });
                    }
                    grads.pool.give(gt);
                }
            }
            &Op::Add(a, b) => {
                self.acc_slice(grads, a, g);
                self.acc_vec(grads, b, owned.take().unwrap_or_default());
            }
            &Op::Mul(a, b) => {
                for (v, other) in [(a, b), (b, a)] {
                    let ov = self.value(other);
                    if let Some((gv, fresh)) = self.acc_fresh(grads, v) {
                        kernels::for_chunks(par, gv, |o, chunk| {
                            for ((d, s), x) in chunk.iter_mut().zip(&g[o..]).zip(&ov[o..]) {
                                put(d, s * x, fresh);
                            }
                        });
                    }
                }
            }
            &Op::Scale(a, s) => {
                if let Some((ga, fresh)) = self.acc_fresh(grads, a) {
                    kernels::for_chunks(par, ga, |o, chunk| {
                        for (d, x) in chunk.iter_mut().zip(&g[o..]) {
                            put(d, x * s, fresh);
                        }
                    });
                }
            }
            &Op::Sum(a) => {
                if let Some(ga) = self.acc(grads, a) {
                    ga.iter_mut().for_each(|d| *d += g[0]);
                }
            }
            Op::RmsNorm { x, w, inv } => {
                let (rows, h) = self.rows_width(*x);
                let (vx, vw) = (self.value(*x), self.value(*w));
                if let Some(gw) = self.acc(grads, *w) {
                    // Partial sums over fixed blocks of rows, added in
                    // order: the same bits for every thread count.
                    const BLOCK_ROWS: usize = 64;
                    let partials = kernels::par_map(par, rows.div_ceil(BLOCK_ROWS), |b| {
                        let mut acc = vec![0.0f32; h];
                        let r0 = b * BLOCK_ROWS;
                        let n = BLOCK_ROWS.min(rows - r0);
                        for ((row, gr), &r) in vx[r0 * h..(r0 + n) * h]
                            .chunks_exact(h)
                            .zip(g[r0 * h..].chunks_exact(h))
                            .zip(&inv[r0..])
                        {
                            for ((d, &xv), &gv) in acc.iter_mut().zip(row).zip(gr) {
                                *d += gv * xv * r;
                            }
                        }
                        acc
                    });
                    for p in partials {
                        gw.iter_mut().zip(&p).for_each(|(d, s)| *d += s);
                    }
                }
                if let Some((gx, fresh)) = self.acc_fresh(grads, *x) {
                    kernels::for_rows(par, gx, h, |r0, chunk| {
                        for (((row, gr), dst), &r) in vx[r0 * h..]
                            .chunks_exact(h)
                            .zip(g[r0 * h..].chunks_exact(h))
                            .zip(chunk.chunks_exact_mut(h))
                            .zip(&inv[r0..])
                        {
                            // d/dx of x·r·w with r = (mean x² + eps)^-1/2:
                            // r·(g⊙w) − x · r³/h · Σ(g⊙w⊙x)
                            let dot = rows::dot3(gr, vw, row);
                            let c = r * r * r * dot / h as f32;
                            for (((d, &gv), &wv), &xv) in dst.iter_mut().zip(gr).zip(vw).zip(row) {
                                put(d, r * gv * wv - xv * c, fresh);
                            }
                        }
                    });
                }
            }
            Op::Rope {
                x,
                table,
                seq,
                head_dim,
            } => {
                let (cos, sin) = (&table.cos, &table.sin);
                let (_, width) = self.rows_width(*x);
                let half = head_dim / 2;
                if let Some((gx, fresh)) = self.acc_fresh(grads, *x) {
                    kernels::for_rows(par, gx, width, |r0, chunk| {
                        for (r, (dst, gr)) in (r0..).zip(
                            chunk
                                .chunks_exact_mut(width)
                                .zip(g[r0 * width..].chunks_exact(width)),
                        ) {
                            let (c, s) = (
                                &cos[(r % seq) * half..][..half],
                                &sin[(r % seq) * half..][..half],
                            );
                            for (dh, gh) in dst
                                .chunks_exact_mut(*head_dim)
                                .zip(gr.chunks_exact(*head_dim))
                            {
                                let (dlo, dhi) = dh.split_at_mut(half);
                                let (glo, ghi) = gh.split_at(half);
                                for ((((d1, d2), &g1), &g2), (&c, &s)) in dlo
                                    .iter_mut()
                                    .zip(dhi.iter_mut())
                                    .zip(glo)
                                    .zip(ghi)
                                    .zip(c.iter().zip(s))
                                {
                                    put(d1, g1 * c + g2 * s, fresh);
                                    put(d2, g2 * c - g1 * s, fresh);
                                }
                            }
                        }
                    });
                }
            }
            &Op::Softmax(x) => {
                let (_, w) = self.rows_width(x);
                if let Some((gx, fresh)) = self.acc_fresh(grads, x) {
                    for ((dst, gr), y) in gx
                        .chunks_exact_mut(w)
                        .zip(g.chunks_exact(w))
                        .zip(node.value.chunks_exact(w))
                    {
                        let dot = rows::dot(gr, y);
                        for ((d, &gv), &yv) in dst.iter_mut().zip(gr).zip(y) {
                            put(d, yv * (gv - dot), fresh);
                        }
                    }
                }
            }
            Op::Attention {
                q,
                k,
                v,
                probs,
                dims,
            } => {
                let (vq, vk, vv) = (self.value(*q), self.value(*k), self.value(*v));
                let mut dq = grads.pool.take(vq.len());
                let mut dk = grads.pool.take(vk.len());
                let mut dv = grads.pool.take(vv.len());
                kernels::attention_backward(
                    (vq, vk, vv),
                    probs,
                    g,
                    *dims,
                    self.par,
                    (&mut dq, &mut dk, &mut dv),
                );
                for (var, d) in [(*q, dq), (*k, dk), (*v, dv)] {
                    self.acc_vec(grads, var, d);
                }
            }
            &Op::Silu(x) => {
                let vx = self.value(x);
                if let Some((gx, fresh)) = self.acc_fresh(grads, x) {
                    kernels::for_chunks(par, gx, |o, chunk| {
                        for ((d, &gv), &xv) in chunk.iter_mut().zip(&g[o..]).zip(&vx[o..]) {
                            let s = 1.0 / (1.0 + (-xv).exp());
                            put(d, gv * s * (1.0 + xv * (1.0 - s)), fresh);
                        }
                    });
                }
            }
            &Op::Relu2(x) => {
                let vx = self.value(x);
                if let Some((gx, fresh)) = self.acc_fresh(grads, x) {
                    kernels::for_chunks(par, gx, |o, chunk| {
                        for ((d, &gv), &xv) in chunk.iter_mut().zip(&g[o..]).zip(&vx[o..]) {
                            // A select, not a branch: the loop vectorizes.
                            put(d, if xv > 0.0 { gv * 2.0 * xv } else { 0.0 }, fresh);
                        }
                    });
                }
            }
            Op::Embedding { table, ids } => {
                let width = self.dims(*table)[1];
                if let Some(gt) = self.acc(grads, *table) {
                    for (&id, gr) in ids.iter().zip(g.chunks_exact(width)) {
                        let dst = &mut gt[id as usize * width..][..width];
                        dst.iter_mut().zip(gr).for_each(|(a, b)| *a += b);
                    }
                }
            }
            Op::CrossEntropy {
                logits,
                targets,
                probs,
                count,
            } => {
                let (_, vocab) = self.rows_width(*logits);
                if *count == 0 {
                    return owned;
                }
                let s = g[0] / *count as f32;
                if let Some(gl) = self.acc(grads, *logits) {
                    kernels::for_rows(par, gl, vocab, |r0, chunk| {
                        for ((&t, dst), p) in targets[r0..]
                            .iter()
                            .zip(chunk.chunks_exact_mut(vocab))
                            .zip(probs[r0 * vocab..].chunks_exact(vocab))
                        {
                            if t == IGNORE_INDEX {
                                continue;
                            }
                            for (d, &pv) in dst.iter_mut().zip(p) {
                                *d += s * pv;
                            }
                            dst[t as usize] -= s;
                        }
                    });
                }
            }
            Op::KlDistill {
                logits,
                teacher,
                probs,
                temperature,
            } => {
                let (n, _) = self.rows_width(*logits);
                let s = g[0] * temperature / n.max(1) as f32;
                if let Some(gl) = self.acc(grads, *logits) {
                    for ((d, &ps), &pt) in gl.iter_mut().zip(probs).zip(teacher) {
                        *d += s * (ps - pt);
                    }
                }
            }
            &Op::Ste { x, .. } => self.acc_vec(grads, x, owned.take().unwrap_or_default()),
        }
        owned
    }
}

/// Gradient buffers of one reverse pass: a slot per node, and the tape's
/// pool, where the buffer of a gradient already pushed to its inputs goes
/// and new ones come from. Most gradients are one of a few activation
/// shapes, so a new one seldom takes a `malloc` (whose free-list walk was
/// 2-4% of a training step) and, for a GEMM's output, never a zero-fill.
struct GradBufs {
    slots: Vec<Option<Vec<f32>>>,
    pool: BufferPool,
}

/// `dst += src`, elementwise, in parallel chunks when large.
fn add_into(par: Parallelism<'_>, dst: &mut [f32], src: &[f32]) {
    kernels::for_chunks(par, dst, |o, chunk| {
        chunk.iter_mut().zip(&src[o..]).for_each(|(d, s)| *d += s);
    });
}
