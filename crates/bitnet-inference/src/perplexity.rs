//! Perplexity over a token stream, and KL divergence against another
//! model's saved log-probabilities — the quality measures for a quantized
//! model, computed the way llama.cpp's `perplexity` tool does.
//!
//! The tokens are cut into chunks of `ctx`; each chunk runs from an empty
//! cache, and only its second half is scored, so every scored token sees
//! at least `ctx / 2` tokens of context. Perplexity is `exp(mean NLL)`,
//! reported with the standard error of the mean NLL.
//!
//! A [`LogProbsFile`] keeps, for every scored position, the whole
//! log-softmax row as f16 (2 bytes per vocabulary entry, as llama.cpp's
//! `--kl-divergence-base` file does with its own u16 encoding): enough to
//! compute `KL(base || model)` and top-1 agreement later against another
//! model run over the same tokens.

use crate::error::{Error, Result};
use crate::model::{BatchEntry, BitNetModel, Logits, Workspace};
use bitnet_core::Parallelism;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Log-softmax of `logits` into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let lse = max + sum.ln() as f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l - lse;
    }
}

/// The scored positions of a token stream cut into chunks of `ctx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks (a partial last chunk is dropped, as llama.cpp does).
    pub chunks: usize,
}

impl Chunking {
    /// Chunks of `ctx` over `tokens` tokens; an error when not even one fits.
    pub fn new(tokens: usize, ctx: usize) -> Result<Self> {
        if ctx < 4 {
            return Err(Error::InvalidArgument(format!(
                "a perplexity context of {ctx} tokens is too short (at least 4)"
            )));
        }
        if tokens < ctx {
            return Err(Error::InvalidArgument(format!(
                "the text has {tokens} tokens, fewer than one context of {ctx}; use a longer text or a smaller --ctx"
            )));
        }
        Ok(Chunking {
            ctx,
            chunks: tokens / ctx,
        })
    }

    /// First scored position within a chunk.
    pub fn first_scored(&self) -> usize {
        self.ctx / 2
    }

    /// Scored positions per chunk (each predicts the token after it).
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first_scored()
    }
}

/// Running totals of one perplexity run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Scored tokens.
    pub count: usize,
    /// Sum of negative log-likelihoods (nats).
    pub nll: f64,
    /// Sum of squared NLLs (for the standard error).
    pub nll2: f64,
    /// KL divergence sums against a base, when one is given.
    pub kl: Option<KlScores>,
}

/// KL divergence totals against a base model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KlScores {
    /// Sum of `KL(base || model)` over positions.
    pub sum: f64,
    /// Sum of squares (standard error).
    pub sum2: f64,
    /// Largest per-position KL.
    pub max: f64,
    /// Positions where both models' most likely token agree.
    pub same_top: usize,
}

impl Scores {
    /// `exp(mean NLL)`.
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// Standard error of the perplexity (delta method on the mean NLL).
    pub fn perplexity_error(&self) -> f64 {
        let n = self.count as f64;
        if n < 2.0 {
            return f64::NAN;
        }
        let mean = self.nll / n;
        let var = (self.nll2 / n - mean * mean).max(0.0) * n / (n - 1.0);
        self.perplexity() * (var / n).sqrt()
    }
}

/// Scores `tokens` chunk by chunk. Each chunk starts with `bos` in place
/// of its first token when given (as llama.cpp does; that position is
/// never scored). `on_chunk(done, total, scores)` reports progress; `save`
/// receives every scored log-softmax row, and `base` supplies the base
/// model's rows for KL.
#[allow(clippy::too_many_arguments)]
pub fn perplexity(
    model: &BitNetModel,
    tokens: &[u32],
    chunking: Chunking,
    bos: Option<u32>,
    par: Parallelism<'_>,
    mut save: Option<&mut LogProbsWriter>,
    mut base: Option<&mut LogProbsReader>,
    mut on_chunk: impl FnMut(usize, usize, &Scores),
) -> Result<Scores> {
    let vocab = model.config().vocab_size;
    if let Some(b) = base.as_deref() {
        b.check_matches(tokens, chunking, vocab)?;
    }
    let mut scores = Scores {
        kl: base.as_ref().map(|_| KlScores::default()),
        ..Scores::default()
    };
    let mut cache = model.new_cache(chunking.ctx);
    let mut ws = Workspace::new();
    let mut logp = vec![0.0f32; vocab];
    let mut base_row = vec![0.0f32; vocab];
    let mut ids = vec![0u32; chunking.ctx];
    for chunk in 0..chunking.chunks {
        ids.copy_from_slice(&tokens[chunk * chunking.ctx..(chunk + 1) * chunking.ctx]);
        if let Some(b) = bos {
            ids[0] = b;
        }
        cache.clear();
        let logits = model.forward_batch(
            &mut [BatchEntry {
                ids: &ids,
                cache: &mut cache,
            }],
            Logits::All,
            &mut ws,
            par,
        )?;
        for pos in chunking.first_scored()..chunking.ctx - 1 {
            log_softmax(&logits[pos * vocab..(pos + 1) * vocab], &mut logp);
            let nll = -f64::from(logp[ids[pos + 1] as usize]);
            scores.count += 1;
            scores.nll += nll;
            scores.nll2 += nll * nll;
            if let Some(w) = save.as_deref_mut() {
                w.write_row(&logp)?;
            }
            if let (Some(r), Some(kl)) = (base.as_deref_mut(), scores.kl.as_mut()) {
                r.read_row(&mut base_row)?;
                let d: f64 = base_row
                    .iter()
                    .zip(&logp)
                    .map(|(&b, &m)| f64::from(b.exp()) * f64::from(b - m))
                    .sum();
                kl.sum += d;
                kl.sum2 += d * d;
                kl.max = kl.max.max(d);
                if crate::generate::argmax(&base_row) == crate::generate::argmax(&logp) {
                    kl.same_top += 1;
                }
            }
        }
        on_chunk(chunk + 1, chunking.chunks, &scores);
    }
    if let Some(w) = save {
        w.finish()?;
    }
    Ok(scores)
}

const MAGIC: &[u8; 8] = b"BNLOGPR1";

/// Header of a log-probabilities file: what was scored, so a KL run can
/// check it compares the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    vocab: u32,
    ctx: u32,
    chunks: u32,
    tokens: Vec<u32>,
}

impl Header {
    fn rows(&self) -> u64 {
        let c = Chunking {
            ctx: self.ctx as usize,
            chunks: self.chunks as usize,
        };
        (c.scored_per_chunk() * c.chunks) as u64
    }
}

/// Writes a log-probabilities file (`--save-logits`).
#[derive(Debug)]
pub struct LogProbsWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    buf: Vec<u8>,
}

impl LogProbsWriter {
    /// Creates `path` for the run of `tokens` chunked as `chunking`.
    pub fn create(path: &Path, tokens: &[u32], chunking: Chunking, vocab: usize) -> Result<Self> {
        let io = |e| io_error(path, e);
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = BufWriter::new(file);
        let used = &tokens[..chunking.ctx * chunking.chunks];
        let mut head = Vec::with_capacity(24 + used.len() * 4);
        head.extend_from_slice(MAGIC);
        for v in [vocab, chunking.ctx, chunking.chunks, used.len()] {
            head.extend_from_slice(&(v as u32).to_le_bytes());
        }
        used.iter()
            .for_each(|t| head.extend_from_slice(&t.to_le_bytes()));
        out.write_all(&head).map_err(io)?;
        Ok(LogProbsWriter {
            path: path.to_path_buf(),
            out,
            buf: Vec::with_capacity(vocab * 2),
        })
    }

    fn write_row(&mut self, logp: &[f32]) -> Result<()> {
        self.buf.clear();
        self.buf.extend(
            logp.iter()
                .flat_map(|&v| half::f16::from_f32(v.max(-65504.0)).to_le_bytes()),
        );
        self.out
            .write_all(&self.buf)
            .map_err(|e| io_error(&self.path, e))
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| io_error(&self.path, e))
    }
}

/// Reads a log-probabilities file (`--kl-base`).
#[derive(Debug)]
pub struct LogProbsReader {
    path: PathBuf,
    header: Header,
    input: BufReader<std::fs::File>,
    buf: Vec<u8>,
}

impl LogProbsReader {
    /// Opens `path` and checks its header and length.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| io_error(path, e);
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut input = BufReader::new(file);
        let mut head = [0u8; 24];
        input
            .read_exact(&mut head)
            .map_err(|_| bad("too short for a log-probabilities file".into()))?;
        if &head[..8] != MAGIC {
            return Err(bad(
                "not a log-probabilities file written by `bitnet perplexity --save-logits`".into(),
            ));
        }
        let word = |i: usize| u32::from_le_bytes(head[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let (vocab, ctx, chunks, n) = (word(0), word(1), word(2), word(3));
        if u64::from(ctx) * u64::from(chunks) != u64::from(n) || ctx < 4 || vocab == 0 {
            return Err(bad(format!(
                "inconsistent header: {chunks} chunks of {ctx} tokens but {n} tokens, vocabulary {vocab}"
            )));
        }
        let mut header = Header {
            vocab,
            ctx,
            chunks,
            tokens: Vec::new(),
        };
        let expected = 24 + u64::from(n) * 4 + header.rows() * u64::from(vocab) * 2;
        if len != expected {
            return Err(bad(format!(
                "{len} bytes, but its header describes {expected}: truncated or not this format"
            )));
        }
        let mut ids = vec![0u8; n as usize * 4];
        input.read_exact(&mut ids).map_err(io)?;
        header.tokens = ids
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok(LogProbsReader {
            path: path.to_path_buf(),
            buf: vec![0; vocab as usize * 2],
            header,
            input,
        })
    }

    fn check_matches(&self, tokens: &[u32], chunking: Chunking, vocab: usize) -> Result<()> {
        let h = &self.header;
        let used = &tokens[..(chunking.ctx * chunking.chunks).min(tokens.len())];
        let why = if h.vocab as usize != vocab {
            format!("its vocabulary is {}, this model's {vocab}", h.vocab)
        } else if h.ctx as usize != chunking.ctx || h.chunks as usize != chunking.chunks {
            format!(
                "it scored {} chunks of {}, this run {} of {} (use the same --ctx and text)",
                h.chunks, h.ctx, chunking.chunks, chunking.ctx
            )
        } else if h.tokens != used {
            "it scored other tokens (another text or tokenizer)".to_string()
        } else {
            return Ok(());
        };
        Err(Error::BadFile {
            path: self.path.clone(),
            message: format!("does not match this run: {why}"),
        })
    }

    fn read_row(&mut self, out: &mut [f32]) -> Result<()> {
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| io_error(&self.path, e))?;
        for (o, b) in out.iter_mut().zip(self.buf.chunks_exact(2)) {
            *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
        Ok(())
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes() {
        let mut out = [0.0; 3];
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let total: f32 = out.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((out[2] - out[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn chunking_scores_the_second_half() {
        let c = Chunking::new(1000, 256).unwrap();
        assert_eq!(
            (c.chunks, c.first_scored(), c.scored_per_chunk()),
            (3, 128, 127)
        );
        assert!(Chunking::new(100, 256).is_err());
        assert!(Chunking::new(100, 2).is_err());
    }

    #[test]
    fn perplexity_error_is_zero_for_constant_nll() {
        let s = Scores {
            count: 4,
            nll: 4.0 * 2.0f64.ln(),
            nll2: 4.0 * 2.0f64.ln().powi(2),
            kl: None,
        };
        assert!((s.perplexity() - 2.0).abs() < 1e-12);
        assert!(s.perplexity_error().abs() < 1e-6);
    }
}
