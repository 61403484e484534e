//! Streaming detokenization: a [`PieceDecoder`] over a [`TextTokenizer`]
//! and its [`StreamDecoder`] (a short window of ids, so each step decodes
//! a handful of tokens, never the whole history, and no piece splits a
//! UTF-8 character).

use crate::error::Result;
use crate::generate::PieceDecoder;
use bitnet_models::tokenizer::{StreamDecoder, TextTokenizer};
use std::ops::Deref;

/// Decodes generated ids into text pieces with a tokenizer: borrowed
/// (`&TextTokenizer`) in a loop that owns it, or shared (`Arc<TextTokenizer>`)
/// when the decoder travels to another thread.
#[derive(Debug)]
pub struct TokenizerDecoder<T: Deref<Target = TextTokenizer>> {
    tokenizer: T,
    stream: StreamDecoder,
}

impl<T: Deref<Target = TextTokenizer>> TokenizerDecoder<T> {
    /// A decoder; `skip_special` leaves special tokens out of the text.
    pub fn new(tokenizer: T, skip_special: bool) -> Self {
        let stream = tokenizer.stream_decoder(skip_special);
        TokenizerDecoder { tokenizer, stream }
    }
}

impl<T: Deref<Target = TextTokenizer>> PieceDecoder for TokenizerDecoder<T> {
    fn step(&mut self, id: u32) -> Result<Option<String>> {
        Ok(self.stream.step(&self.tokenizer, id)?)
    }

    fn flush(&mut self) -> Result<String> {
        Ok(self.stream.flush(&self.tokenizer)?.unwrap_or_default())
    }
}
