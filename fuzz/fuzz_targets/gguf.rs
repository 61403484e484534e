//! The GGUF reader on arbitrary bytes: it returns an error or a parse in
//! which every tensor's bytes lie inside the file with exactly the declared
//! size; it never panics.
#![no_main]

use bitnet_models::gguf::GgufContent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = GgufContent::parse(data) else {
        return;
    };
    for t in content.tensors() {
        let bytes = content
            .tensor_bytes(data, t.name())
            .expect("a parsed tensor must be readable");
        assert_eq!(bytes.len() as u64, t.size_bytes(), "tensor {}", t.name());
    }
    let _ = content.metadata().get_str("general.architecture");
});
