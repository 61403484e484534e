//! Incremental decoding for streaming generation: token ids go in one at a
//! time, text comes out only once it is complete UTF-8.
//!
//! Byte-level BPE tokens are bytes, so one character can span several
//! tokens (an emoji is four bytes, often two or more tokens); decoding a
//! lone token then gives U+FFFD. Decoding the whole history every step
//! would be quadratic. Like HF's `TextStreamer` and `tokenizers`'
//! `DecodeStream`, [`StreamDecoder`] keeps a short window: `prefix` ids
//! (already emitted, kept as left context so decoders that strip a leading
//! space see it) followed by the pending ids. Each step decodes only that
//! window and emits the text past the prefix's decoding, unless it ends in
//! U+FFFD (an incomplete character). After an emission the window shrinks
//! to the ids just emitted.
//!
//! The pending part is bounded: a character is at most 4 bytes, so after
//! [`MAX_PENDING`] ids without complete text the decoder emits what it has
//! (with U+FFFD for invalid bytes) rather than grow.
//!
//! ```text
//! ids:     ... | prefix (emitted) | pending (not yet complete) | <- new id
//! window:        decode(prefix ++ pending ++ [id]) minus decode(prefix)
//! ```

use super::TextTokenizer;
use crate::error::Result;

/// Pending ids after which the decoder emits even incomplete text.
pub const MAX_PENDING: usize = 16;

/// Turns a stream of token ids into text pieces that never split a
/// character. Owns no tokenizer: pass the one that produced the ids to each
/// call.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    skip_special_tokens: bool,
    /// The window: `prefix_len` emitted ids, then pending ids.
    ids: Vec<u32>,
    prefix_len: usize,
    /// `decode(ids[..prefix_len])`.
    prefix: String,
}

impl StreamDecoder {
    /// A decoder; `skip_special_tokens` drops special tokens (BOS, EOS,
    /// chat markers) from the text.
    pub fn new(skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder {
            skip_special_tokens,
            ..StreamDecoder::default()
        }
    }

    /// Adds one id; returns the new text if it is complete, else `None`
    /// (the bytes are held until a later id completes them).
    pub fn step(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, self.skip_special_tokens)?;
        let pending = self.ids.len() - self.prefix_len;
        if text.ends_with('\u{FFFD}') && pending < MAX_PENDING {
            return Ok(None);
        }
        let new = match text.strip_prefix(self.prefix.as_str()) {
            Some(new) => new.to_owned(),
            None => {
                // The new ids changed how the emitted text decodes (bytes
                // already shown as U+FFFD, after `MAX_PENDING` ids, now
                // complete a character). Shown text cannot be taken back:
                // decode the pending ids on their own from here on.
                self.ids.drain(..self.prefix_len);
                self.prefix_len = 0;
                self.prefix.clear();
                tok.decode(&self.ids, self.skip_special_tokens)?
            }
        };
        if new.is_empty() && pending < MAX_PENDING {
            // E.g. a skipped special token: nothing to show yet.
            return Ok(None);
        }
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        self.prefix = tok.decode(&self.ids, self.skip_special_tokens)?;
        Ok(if new.is_empty() { None } else { Some(new) })
    }

    /// Emits whatever is pending at the end of a stream, incomplete
    /// characters as U+FFFD, and resets the decoder.
    pub fn flush(&mut self, tok: &TextTokenizer) -> Result<Option<String>> {
        let text = tok.decode(&self.ids, self.skip_special_tokens)?;
        let rest = match text.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_owned(),
            // As in `step`: what was shown stays; the pending ids alone.
            None => tok.decode(&self.ids[self.prefix_len..], self.skip_special_tokens)?,
        };
        self.ids.clear();
        self.prefix_len = 0;
        self.prefix.clear();
        Ok(if rest.is_empty() { None } else { Some(rest) })
    }

    /// Ids held in the window (emitted context plus pending).
    pub fn window_len(&self) -> usize {
        self.ids.len()
    }
}
