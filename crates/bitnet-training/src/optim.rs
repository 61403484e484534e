//! Optimizers (AdamW, Adam, SGD with momentum and Nesterov) with PyTorch's
//! update rules, global-norm gradient clipping, and the optimizer state a
//! checkpoint stores.
//!
//! Weight decay reaches only parameters whose
//! [`ParamKind::decays`](crate::model::ParamKind::decays) is true
//! (ternary projections); norms and embeddings are never decayed.

use bitnet_core::Parallelism;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Param;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    #[default]
    AdamW,
    /// Adam with L2 weight decay added to the gradient (`torch.optim.Adam`).
    Adam,
    /// SGD with optional momentum and Nesterov (`torch.optim.SGD`, no dampening).
    Sgd,
}

/// Optimizer hyper-parameters (the learning rate and weight decay given to
/// [`Optimizer::step`] come from the schedule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// Adam ε.
    pub eps: f32,
    /// SGD momentum (0 disables).
    pub momentum: f32,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            momentum: 0.0,
            nesterov: false,
        }
    }
}

impl OptimizerConfig {
    /// Rejects values PyTorch rejects.
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps >= 0.0
            && self.momentum >= 0.0
            && !(self.nesterov && self.momentum <= 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "invalid optimizer settings {self:?}"
            )))
        }
    }
}

/// Optimizer state: the step count and per-parameter moment buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    /// First moments (Adam) or momentum buffers (SGD); empty until used.
    pub(crate) m: Vec<Vec<f32>>,
    /// Second moments (Adam); empty for SGD.
    pub(crate) v: Vec<Vec<f32>>,
}

impl Optimizer {
    /// Fresh state for `params`.
    pub fn new(config: OptimizerConfig, params: &[Param]) -> Result<Self> {
        config.validate()?;
        let zeros = |p: &Param| vec![0.0f32; p.data.len()];
        let adam = config.kind != OptimizerKind::Sgd;
        Ok(Optimizer {
            m: params.iter().map(zeros).collect(),
            v: if adam {
                params.iter().map(zeros).collect()
            } else {
                Vec::new()
            },
            config,
            step: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub(crate) fn set_steps(&mut self, step: u64) {
        self.step = step;
    }

    /// One update of every parameter with its gradient, at learning rate
    /// `lr` and weight decay `wd` (applied to decaying kinds only), large
    /// tensors in parallel chunks on `par` (elementwise: the same result
    /// for every thread count).
    pub fn step(
        &mut self,
        params: &mut [Param],
        grads: &[Vec<f32>],
        lr: f32,
        wd: f32,
        par: Parallelism<'_>,
    ) -> Result<()> {
        self.step_scaled(params, grads, 1.0, lr, wd, par)
    }

    /// [`step`](Self::step) with every gradient multiplied by `grad_scale`
    /// as it is read: the same bits as scaling the gradients first (one f32
    /// product either way), without a pass that reads and writes them all.
    /// A training step passes [`clip_factor`] here.
    pub fn step_scaled(
        &mut self,
        params: &mut [Param],
        grads: &[Vec<f32>],
        grad_scale: f32,
        lr: f32,
        wd: f32,
        par: Parallelism<'_>,
    ) -> Result<()> {
        if grads.len() != params.len() || self.m.len() != params.len() {
            return Err(Error::Config(format!(
                "{} gradients / {} optimizer slots for {} parameters",
                grads.len(),
                self.m.len(),
                params.len()
            )));
        }
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let wd = if p.kind.decays() { wd } else { 0.0 };
            match c.kind {
                OptimizerKind::AdamW | OptimizerKind::Adam => {
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2 = 1.0 - c.beta2.powi(t);
                    let step_size = lr / bc1;
                    let bc2_sqrt = bc2.sqrt();
                    let decoupled = c.kind == OptimizerKind::AdamW;
                    let update = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                        for (((w, &g0), m), v) in
                            w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                        {
                            let g0 = g0 * grad_scale;
                            let g = if decoupled {
                                *w *= 1.0 - lr * wd;
                                g0
                            } else {
                                g0 + wd * *w
                            };
                            // PyTorch's order: lerp for m, then v = β2 v + (1-β2) g².
                            *m += (g - *m) * (1.0 - c.beta1);
                            *v = *v * c.beta2 + (1.0 - c.beta2) * g * g;
                            let denom = v.sqrt() / bc2_sqrt + c.eps;
                            *w -= step_size * *m / denom;
                        }
                    };
                    match par {
                        Parallelism::Pool(pool) if p.data.len() >= PAR_MIN_LEN => {
                            pool.install(|| {
                                p.data
                                    .par_chunks_mut(CHUNK)
                                    .zip(g.par_chunks(CHUNK))
                                    .zip(m.par_chunks_mut(CHUNK))
                                    .zip(v.par_chunks_mut(CHUNK))
                                    .for_each(|(((w, g), m), v)| update(w, g, m, v))
                            })
                        }
                        _ => update(&mut p.data, g, m, v),
                    }
                }
                OptimizerKind::Sgd => {
                    let buf = &mut self.m[i];
                    for ((w, &g0), b) in p.data.iter_mut().zip(g).zip(buf.iter_mut()) {
                        let mut g = g0 * grad_scale + wd * *w;
                        if c.momentum > 0.0 {
                            *b = if t == 1 { g } else { c.momentum * *b + g };
                            g = if c.nesterov { g + c.momentum * *b } else { *b };
                        }
                        *w -= lr * g;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: [`clip_factor`]). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f32, par: Parallelism<'_>) -> f32 {
    let norm = grad_norm(grads, par);
    let factor = clip_factor(norm, max_norm);
    if factor < 1.0 {
        for g in grads.iter_mut() {
            match par {
                Parallelism::Pool(pool) if g.len() >= PAR_MIN_LEN => pool.install(|| {
                    g.par_chunks_mut(CHUNK)
                        .for_each(|c| c.iter_mut().for_each(|x| *x *= factor))
                }),
                _ => g.iter_mut().for_each(|x| *x *= factor),
            }
        }
    }
    norm
}

/// PyTorch's clipping factor: `max_norm / (norm + 1e-6)`, at most 1; 1
/// when `max_norm` is not positive (clipping off).
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

/// The global L2 norm of `grads` (f64 sums; the same bits on any pool).
pub fn grad_norm(grads: &[Vec<f32>], par: Parallelism<'_>) -> f32 {
    // Eight f64 running sums per tensor, in a fixed order: one chain would
    // be latency-bound, and the result must not depend on the pool.
    let tensor_sq = |g: &Vec<f32>| {
        let mut lanes = [0.0f64; 8];
        let mut blocks = g.chunks_exact(8);
        for b in &mut blocks {
            for (l, &x) in lanes.iter_mut().zip(b) {
                *l += f64::from(x) * f64::from(x);
            }
        }
        let tail: f64 = blocks
            .remainder()
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum();
        lanes.iter().sum::<f64>() + tail
    };
    // One task per tensor on a pool, the sums then added in tensor order:
    // the same bits either way.
    let per_tensor: Vec<f64> = match par {
        Parallelism::Pool(pool) => pool.install(|| grads.par_iter().map(tensor_sq).collect()),
        Parallelism::Sequential => grads.iter().map(tensor_sq).collect(),
    };
    per_tensor.iter().sum::<f64>().sqrt() as f32
}

/// Tensors shorter than this are updated on the calling thread.
const PAR_MIN_LEN: usize = 1 << 15;
/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Parameters that weight decay reaches, for reporting.
pub fn decayed_names(params: &[Param]) -> Vec<&str> {
    params
        .iter()
        .filter(|p| p.kind.decays())
        .map(|p| p.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParamKind;

    fn p(kind: ParamKind, v: &[f32]) -> Param {
        Param {
            name: "p".into(),
            dims: vec![v.len()],
            data: v.to_vec(),
            kind,
        }
    }

    #[test]
    fn adamw_first_step_moves_by_lr_and_decays_linears_only() {
        let mut ps = vec![
            p(ParamKind::Linear { layer: 0 }, &[1.0, -2.0]),
            p(ParamKind::Norm, &[1.0]),
        ];
        let mut o = Optimizer::new(OptimizerConfig::default(), &ps).unwrap();
        o.step(
            &mut ps,
            &[vec![0.5, -0.1], vec![3.0]],
            0.1,
            0.5,
            Parallelism::Sequential,
        )
        .unwrap();
        // Step 1 of Adam moves each weight by lr·sign(g) (up to ε); AdamW decays first.
        assert!((ps[0].data[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-6);
        assert!((ps[0].data[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-6);
        assert!((ps[1].data[0] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn sgd_momentum_and_nesterov() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        };
        let mut ps = vec![p(ParamKind::Norm, &[0.0])];
        let mut o = Optimizer::new(cfg, &ps).unwrap();
        o.step(&mut ps, &[vec![1.0]], 0.1, 0.0, Parallelism::Sequential)
            .unwrap(); // buf 1, g 1.9
        assert!((ps[0].data[0] + 0.19).abs() < 1e-6);
        o.step(&mut ps, &[vec![1.0]], 0.1, 0.0, Parallelism::Sequential)
            .unwrap(); // buf 1.9, g 2.71
        assert!((ps[0].data[0] + 0.19 + 0.271).abs() < 1e-6);
        let bad = OptimizerConfig {
            nesterov: true,
            momentum: 0.0,
            kind: OptimizerKind::Sgd,
            ..Default::default()
        };
        assert!(Optimizer::new(bad, &ps).is_err());
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![vec![3.0, 0.0], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0, Parallelism::Sequential);
        assert_eq!(n, 5.0);
        let after: f32 = g.iter().flatten().map(|x| x * x).sum::<f32>().sqrt();
        assert!((after - 1.0).abs() < 1e-5);
        let mut small = vec![vec![0.1]];
        clip_grad_norm(&mut small, 1.0, Parallelism::Sequential);
        assert_eq!(small[0][0], 0.1);
        assert_eq!(clip_factor(5.0, 0.0), 1.0);
    }

    /// Scaling inside the update (what a training step does) gives the
    /// bits of clipping the gradients first, for Adam(W) and SGD.
    #[test]
    fn a_scaled_step_equals_clipping_first() {
        let grads: Vec<Vec<f32>> = vec![
            (0..70_000)
                .map(|i| ((i * 37) % 101) as f32 / 7.0 - 7.0)
                .collect(),
            vec![0.3, -2.5, 9.0],
        ];
        let params = || {
            vec![
                p(ParamKind::Linear { layer: 0 }, &vec![0.25; 70_000]),
                p(ParamKind::Norm, &[1.0, -1.0, 0.5]),
            ]
        };
        let pool = bitnet_core::build_pool(2).unwrap();
        for kind in [
            OptimizerKind::AdamW,
            OptimizerKind::Adam,
            OptimizerKind::Sgd,
        ] {
            let cfg = OptimizerConfig {
                kind,
                momentum: 0.9,
                ..Default::default()
            };
            let (mut a, mut b) = (params(), params());
            let mut oa = Optimizer::new(cfg.clone(), &a).unwrap();
            let mut ob = Optimizer::new(cfg, &b).unwrap();
            for _ in 0..3 {
                let mut clipped = grads.clone();
                let norm = clip_grad_norm(&mut clipped, 1.0, Parallelism::Pool(&pool));
                assert_eq!(norm, grad_norm(&grads, Parallelism::Sequential));
                oa.step(&mut a, &clipped, 0.01, 0.1, Parallelism::Pool(&pool))
                    .unwrap();
                ob.step_scaled(
                    &mut b,
                    &grads,
                    clip_factor(norm, 1.0),
                    0.01,
                    0.1,
                    Parallelism::Pool(&pool),
                )
                .unwrap();
            }
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.data, y.data, "{kind:?}");
            }
        }
    }
}
