//! Where a model runs.
//!
//! A user names a device with `--device cpu|cuda[:N]|wgpu[:N]|auto`
//! ([`DeviceSpec`]). Every backend runs one sequence behind
//! [`SequenceForward`]: token ids in, logits out, the KV cache kept on the
//! device between calls. [`CpuSequence`] is the CPU's, over
//! [`BitNetModel`]; the GPU crates (`bitnet-wgpu`) implement the same
//! trait, so generation ([`crate::generate::generate_on`]) and benchmarks
//! run unchanged on any of them.
//!
//! ```
//! use bitnet_inference::DeviceSpec;
//! assert_eq!("wgpu:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu(Some(1)));
//! assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
//! assert!("tpu".parse::<DeviceSpec>().is_err());
//! ```

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{BatchEntry, BitNetModel, Logits, Workspace};
use bitnet_core::Parallelism;
use bitnet_models::config::BitNetConfig;
use std::fmt;
use std::str::FromStr;

/// The device a user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU kernels (always available).
    #[default]
    Cpu,
    /// A GPU when one works, else the CPU (with a one-line notice).
    Auto,
    /// An adapter through wgpu (Vulkan, Metal, DX12): `None` picks the
    /// first hardware adapter, or a software one when there is no other.
    Wgpu(Option<usize>),
    /// An NVIDIA GPU by CUDA ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| format!("device index in `{s}` must be a non-negative integer"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("wgpu" | "gpu", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            ("cpu" | "auto", Some(_)) => Err(format!("`{name}` takes no index")),
            _ => Err(format!(
                "unknown device `{s}`: use cpu, auto, wgpu, wgpu:N, cuda or cuda:N"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Wgpu(None) => f.write_str("wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// One sequence's forward passes on some device.
///
/// Each call runs `ids` at the positions after those already held,
/// appends their keys and values, and returns logits `[rows, vocab]` for
/// the rows `which` selects. An error leaves the held positions as they
/// were.
pub trait SequenceForward {
    /// What runs it, for messages (`cpu (2 threads)`, the adapter's name).
    fn device_name(&self) -> String;
    /// The model's configuration.
    fn config(&self) -> &BitNetConfig;
    /// Positions held (keys and values cached).
    fn len(&self) -> usize;
    /// Whether no position is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the sequence can hold.
    fn capacity(&self) -> usize;
    /// Forgets positions from `len` on.
    fn truncate(&mut self, len: usize);
    /// Runs `ids`; see the trait's documentation.
    fn forward(&mut self, ids: &[u32], which: Logits) -> Result<Vec<f32>>;
    /// Bytes of device memory the model's buffers take (weights, KV
    /// cache, scratch), for devices with memory of their own.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Where one decode step's time goes, as (part, microseconds) rows,
    /// for devices that can time their own work (`bitnet bench
    /// --profile`); empty where there is nothing to add to the wall clock.
    /// Leaves the held positions as they were.
    fn decode_profile(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// Checks a GPU backend's call of `ids` at position `len` against the
/// model's vocabulary and the sequence's `capacity`, as the CPU engine
/// does: empty input, an id outside the vocabulary, a full context.
pub fn check_ids(ids: &[u32], vocab: usize, len: usize, capacity: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(crate::Error::EmptyInput);
    }
    if let Some((position, &id)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
    {
        return Err(crate::Error::TokenOutOfRange {
            id,
            position,
            vocab,
        });
    }
    if len + ids.len() > capacity {
        return Err(crate::Error::ContextFull {
            needed: len + ids.len(),
            capacity,
        });
    }
    Ok(())
}

/// Runs `ids` as passes of at most `max_tokens` tokens (`max_logit_rows`
/// when every row's logits are wanted), asking each `pass` for logits only
/// where `which` needs them, and concatenates what they return. A pass
/// returns `Some` logits exactly when it was asked for some. The first
/// error is returned as is; undoing the passes before it is the caller's.
pub fn run_in_passes<E>(
    ids: &[u32],
    which: Logits,
    max_tokens: usize,
    max_logit_rows: usize,
    mut pass: impl FnMut(&[u32], Option<Logits>) -> std::result::Result<Option<Vec<f32>>, E>,
) -> std::result::Result<Vec<f32>, E> {
    let piece = match which {
        Logits::Last => max_tokens,
        Logits::All => max_logit_rows,
    }
    .max(1);
    let pieces = ids.len().div_ceil(piece);
    let mut all = Vec::new();
    for (i, chunk) in ids.chunks(piece).enumerate() {
        let want = match which {
            Logits::All => Some(Logits::All),
            Logits::Last if i + 1 == pieces => Some(Logits::Last),
            Logits::Last => None,
        };
        if let Some(l) = pass(chunk, want)? {
            all.extend_from_slice(&l);
        }
    }
    Ok(all)
}

/// Largest |a - b| over the largest |b|: how GPU backends' self-tests and
/// tests compare their outputs with the CPU's (infinite when the lengths
/// differ or a value is NaN).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    if a.len() != b.len() || worst.is_nan() {
        return f32::INFINITY;
    }
    worst / scale
}

/// Greedy continuation of `prompt` for `steps` tokens on any device.
pub fn greedy_on(seq: &mut dyn SequenceForward, prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(steps);
    let mut logits = seq.forward(prompt, Logits::Last)?;
    for _ in 0..steps {
        let id = crate::generate::argmax(&logits) as u32;
        out.push(id);
        logits = seq.forward(&[id], Logits::Last)?;
    }
    Ok(out)
}

/// The CPU's [`SequenceForward`]: a [`BitNetModel`], one KV cache and the
/// forward buffers, on `par`'s threads.
#[derive(Debug)]
pub struct CpuSequence<'m> {
    model: &'m BitNetModel,
    cache: KvCache,
    ws: Workspace,
    par: Parallelism<'m>,
}

impl<'m> CpuSequence<'m> {
    /// A sequence of up to `capacity` positions (at most the model's context).
    pub fn new(model: &'m BitNetModel, capacity: usize, par: Parallelism<'m>) -> Self {
        CpuSequence {
            model,
            cache: model.new_cache(capacity),
            ws: Workspace::new(),
            par,
        }
    }
}

impl SequenceForward for CpuSequence<'_> {
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.par.threads())
    }
    fn config(&self) -> &BitNetConfig {
        self.model.config()
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn capacity(&self) -> usize {
        self.cache.capacity()
    }
    fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }
    fn forward(&mut self, ids: &[u32], which: Logits) -> Result<Vec<f32>> {
        let mut batch = [BatchEntry {
            ids,
            cache: &mut self.cache,
        }];
        Ok(self
            .model
            .forward_batch(&mut batch, which, &mut self.ws, self.par)?
            .to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in [
            "cpu", "auto", "wgpu", "wgpu:0", "wgpu:3", "cuda:0", "cuda:2",
        ] {
            let d: DeviceSpec = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("gpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(None)));
        for bad in ["", "cpu:1", "auto:0", "cuda:x", "wgpu:-1", "metal", "cuda:"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }
}
