//! Streaming detokenization over a [`TextTokenizer`].

use crate::error::Result;
use crate::generate::PieceDecoder;
use bitnet_models::tokenizer::TextTokenizer;

/// Decodes generated ids into text pieces that never split a character.
///
/// It keeps a short window of recent ids: the text of the window minus
/// the text of its older part is the new piece, so each step decodes a
/// handful of tokens (not the whole history), and a piece is held back
/// while it ends in an incomplete character (`U+FFFD`), as byte-level
/// BPE can split one across tokens. This is the method of transformers'
/// `TextStreamer` and tokenizers' `DecodeStream`.
#[derive(Debug)]
pub struct TokenizerDecoder<'t> {
    tokenizer: &'t TextTokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window.
    prefix: usize,
    /// Ids before this are already emitted.
    read: usize,
}

impl<'t> TokenizerDecoder<'t> {
    /// A decoder; `skip_special` leaves special tokens out of the text.
    pub fn new(tokenizer: &'t TextTokenizer, skip_special: bool) -> Self {
        TokenizerDecoder {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

impl PieceDecoder for TokenizerDecoder<'_> {
    fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let done = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let all = self
            .tokenizer
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        if all.len() > done.len() && all.is_char_boundary(done.len()) && !all.ends_with('\u{FFFD}')
        {
            let piece = all[done.len()..].to_string();
            // Drop ids that can no longer affect the text, keeping the
            // window (and so each step's work) bounded.
            self.prefix = self.read;
            self.read = self.ids.len();
            if self.prefix > 64 {
                self.ids.drain(..self.prefix);
                self.read -= self.prefix;
                self.prefix = 0;
            }
            return Ok(Some(piece));
        }
        Ok(None)
    }

    fn flush(&mut self) -> Result<String> {
        let done = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let all = self
            .tokenizer
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(match all.get(done.len()..) {
            Some(rest) if all.starts_with(&done) => rest.to_string(),
            _ => String::new(),
        })
    }
}
