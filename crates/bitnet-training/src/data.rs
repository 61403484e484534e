//! The data pipeline: plain-text and JSONL files → tokenizer → one token
//! stream (documents separated by EOS) → packed fixed-length sequences, a
//! held-out validation tail, and a deterministic seeded shuffle per epoch.
//!
//! Sequences are windows of `seq_len + 1` tokens with stride `seq_len`
//! (inputs are the first `seq_len`, targets the last `seq_len`). The
//! validation split is the last windows of the stream, so no training window
//! overlaps it except at the one shared boundary token. The epoch order is a
//! Fisher-Yates shuffle seeded by `(seed, epoch)`, so a [`DataPosition`]
//! alone resumes the stream exactly.

use bitnet_models::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Where the next training batch starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the training windows.
    pub epoch: u64,
    /// Next window within the epoch's order.
    pub index: u64,
}

/// Reads documents: `.jsonl` files give one document per line from the
/// string field `field`; any other file is one document. Non-UTF-8 bytes,
/// malformed JSON lines and an empty corpus are errors naming the file.
pub fn read_documents(files: &[PathBuf], field: &str) -> Result<Vec<String>> {
    if files.is_empty() {
        return Err(Error::Data("no corpus files given".into()));
    }
    let mut docs = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(Error::io(path, "read"))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Data(format!(
                "{} is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        if path.extension().is_some_and(|e| e == "jsonl") {
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    Error::Data(format!(
                        "{}:{}: not a JSON object: {e}",
                        path.display(),
                        n + 1
                    ))
                })?;
                let s = v.get(field).and_then(|s| s.as_str()).ok_or_else(|| {
                    Error::Data(format!(
                        "{}:{}: no string field `{field}`",
                        path.display(),
                        n + 1
                    ))
                })?;
                docs.push(s.to_string());
            }
        } else {
            docs.push(text);
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    if docs.is_empty() {
        return Err(Error::Data(format!("the corpus {files:?} holds no text")));
    }
    Ok(docs)
}

/// Tokenizes `docs` into one stream, each document followed by `eos` if given.
pub fn tokenize(docs: &[String], tok: &TextTokenizer, eos: Option<u32>) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for d in docs {
        out.extend(tok.encode(d, false)?);
        out.extend(eos);
    }
    Ok(out)
}

/// Packed training and validation windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    seq_len: usize,
    train: Vec<Vec<u32>>,
    val: Vec<Vec<u32>>,
}

impl Dataset {
    /// Packs `tokens` into windows of `seq_len + 1` and holds out the last
    /// `val_fraction` of them (at least one when the fraction is positive).
    pub fn pack(tokens: &[u32], seq_len: usize, val_fraction: f32) -> Result<Self> {
        if seq_len == 0 {
            return Err(Error::Config("seq_len must be positive".into()));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Config(format!(
                "val_fraction {val_fraction} must be in [0, 1)"
            )));
        }
        let n = tokens.len().saturating_sub(1) / seq_len;
        let n_val = if val_fraction > 0.0 {
            ((n as f32 * val_fraction).round() as usize).max(1)
        } else {
            0
        };
        if n <= n_val {
            return Err(Error::Data(format!(
                "the corpus has {} tokens: too few for sequence length {seq_len} \
                 ({n} windows, {n_val} held out for validation)",
                tokens.len()
            )));
        }
        let windows: Vec<Vec<u32>> = (0..n)
            .map(|i| tokens[i * seq_len..i * seq_len + seq_len + 1].to_vec())
            .collect();
        let (train, val) = windows.split_at(n - n_val);
        Ok(Dataset {
            seq_len,
            train: train.to_vec(),
            val: val.to_vec(),
        })
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Training windows.
    pub fn train_len(&self) -> usize {
        self.train.len()
    }

    /// Validation windows.
    pub fn val(&self) -> &[Vec<u32>] {
        &self.val
    }

    /// Unigram baseline (nats/token) of the validation targets under the
    /// training windows' token frequencies; see [`unigram_baseline`].
    pub fn unigram_baseline(&self, vocab: usize) -> f64 {
        let train: Vec<u32> = self
            .train
            .iter()
            .flat_map(|w| w[1..].iter().copied())
            .collect();
        let val: Vec<u32> = self
            .val
            .iter()
            .flat_map(|w| w[1..].iter().copied())
            .collect();
        unigram_baseline(&train, &val, vocab)
    }

    /// The training-window order of `epoch`.
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        Rng::new(seed ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03)).shuffle(&mut order);
        order
    }

    /// The next `batch` training windows from `pos` (advancing it, across
    /// epochs): `(inputs, targets)`, each `batch * seq_len` ids.
    pub fn next_batch(
        &self,
        batch: usize,
        seed: u64,
        pos: &mut DataPosition,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut order = self.epoch_order(seed, pos.epoch);
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            if pos.index as usize >= order.len() {
                pos.epoch += 1;
                pos.index = 0;
                order = self.epoch_order(seed, pos.epoch);
            }
            let w = &self.train[order[pos.index as usize]];
            inputs.extend_from_slice(&w[..self.seq_len]);
            targets.extend_from_slice(&w[1..]);
            pos.index += 1;
        }
        (inputs, targets)
    }
}

/// Unigram cross-entropy (nats/token) of `eval` under the smoothed token
/// frequencies of `train`: the baseline a language model must beat.
pub fn unigram_baseline(train: &[u32], eval: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab]; // add-one smoothing
    for &t in train {
        if (t as usize) < vocab {
            counts[t as usize] += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    let nll: f64 = eval
        .iter()
        .map(|&t| -(counts.get(t as usize).copied().unwrap_or(1.0) / total).ln())
        .sum();
    nll / eval.len().max(1) as f64
}

/// Loads a tokenizer from a `tokenizer.json` file or a directory holding one.
pub fn load_tokenizer(path: &Path) -> Result<TextTokenizer> {
    Ok(if path.is_dir() {
        TextTokenizer::from_dir(path)?
    } else {
        TextTokenizer::from_file(path)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_split_and_resumable_shuffle() {
        let tokens: Vec<u32> = (0..101).collect();
        let d = Dataset::pack(&tokens, 10, 0.2).unwrap();
        assert_eq!(d.train_len(), 8);
        assert_eq!(d.val().len(), 2);
        assert_eq!(d.val()[1], (90..101).collect::<Vec<u32>>());
        let mut pos = DataPosition::default();
        let (i, t) = d.next_batch(3, 7, &mut pos);
        assert_eq!(i.len(), 30);
        assert_eq!(i[1..10], t[..9]);
        // Resuming from a saved position continues the same stream.
        let mut saved = pos;
        let a: Vec<_> = (0..5).map(|_| d.next_batch(3, 7, &mut pos)).collect();
        let b: Vec<_> = (0..5).map(|_| d.next_batch(3, 7, &mut saved)).collect();
        assert_eq!(a, b);
        assert!(pos.epoch >= 2);
        assert_ne!(d.epoch_order(7, 0), d.epoch_order(7, 1));
        assert!(Dataset::pack(&tokens, 200, 0.1).is_err());
        assert!(Dataset::pack(&tokens, 0, 0.1).is_err());
    }

    #[test]
    fn bad_corpora_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin.txt");
        std::fs::write(&bin, b"ok\xff\xfe").unwrap();
        let e = read_documents(&[bin], "text").unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 2"), "{e}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(
            read_documents(&[empty], "text")
                .unwrap_err()
                .to_string()
                .contains("no text")
        );
        let jl = dir.path().join("c.jsonl");
        std::fs::write(&jl, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(
            read_documents(std::slice::from_ref(&jl), "text").unwrap(),
            vec!["a", "b"]
        );
        assert!(read_documents(&[jl], "body").is_err());
        assert!(read_documents(&[], "text").is_err());
    }

    #[test]
    fn unigram_baseline_of_uniform_stream() {
        let t: Vec<u32> = (0..4).cycle().take(400).collect();
        let b = unigram_baseline(&t, &t, 4);
        assert!((b - 4f64.ln()).abs() < 1e-9);
    }
}
