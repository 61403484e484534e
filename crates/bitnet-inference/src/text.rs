//! Streaming detokenization: a [`PieceDecoder`] over a [`TextTokenizer`]
//! and its [`StreamDecoder`] (a short window of ids, so each step decodes
//! a handful of tokens, never the whole history, and no piece splits a
//! UTF-8 character).

use crate::error::Result;
use crate::generate::PieceDecoder;
use bitnet_models::tokenizer::{StreamDecoder, TextTokenizer};

/// Decodes generated ids into text pieces with `tokenizer`.
#[derive(Debug)]
pub struct TokenizerDecoder<'t> {
    tokenizer: &'t TextTokenizer,
    stream: StreamDecoder,
}

impl<'t> TokenizerDecoder<'t> {
    /// A decoder; `skip_special` leaves special tokens out of the text.
    pub fn new(tokenizer: &'t TextTokenizer, skip_special: bool) -> Self {
        TokenizerDecoder {
            tokenizer,
            stream: tokenizer.stream_decoder(skip_special),
        }
    }
}

impl PieceDecoder for TokenizerDecoder<'_> {
    fn step(&mut self, id: u32) -> Result<Option<String>> {
        Ok(self.stream.step(self.tokenizer, id)?)
    }

    fn flush(&mut self) -> Result<String> {
        Ok(self.stream.flush(self.tokenizer)?.unwrap_or_default())
    }
}
