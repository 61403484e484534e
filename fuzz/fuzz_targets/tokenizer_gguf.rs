//! `tokenizer.json` text to llama.cpp's `tokenizer.ggml.*` keys (what
//! `bitnet convert` writes into GGUF files) on arbitrary input: an error or
//! entries, never a panic; entries always build back into a tokenizer or
//! give a typed error, again without panicking.
#![no_main]

use bitnet_models::gguf::{GgufContent, GgufWriter};
use bitnet_models::tokenizer::{TextTokenizer, gguf::to_metadata};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    let source = Path::new("tokenizer.json");
    let Ok(entries) = to_metadata(json, usize::from(n) * 4, Some(0), None, None, source) else {
        return;
    };
    let mut w = GgufWriter::new();
    for (k, v) in entries {
        if w.add_metadata(k, v).is_err() {
            return;
        }
    }
    let mut bytes = Vec::new();
    if w.write_to(&mut bytes, Path::new("fuzz.gguf")).is_err() {
        return;
    }
    let content = GgufContent::parse(&bytes).expect("our own GGUF parses");
    let _ = TextTokenizer::from_gguf_metadata(content.metadata(), source);
});
