//! The GGUF reader on arbitrary bytes: it returns an error or a parse in
//! which every tensor's bytes lie inside the file with exactly the declared
//! size; it never panics. Tensors of a type `dequant` handles (F32, F16,
//! BF16, Q8_0, Q4_K, Q6_K, TQ1_0, TQ2_0) dequantize, or fail only on a
//! non-finite scale or a ternary block holding an invalid code.
#![no_main]

use bitnet_models::gguf::dequant::{self, DequantError};
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
        if dequant::is_supported(t.ggml_type()) {
            let mut out = vec![0.0f32; t.element_count() as usize];
            match dequant::dequantize_row(t.ggml_type(), bytes, &mut out) {
                Ok(())
                | Err(DequantError::NonFiniteScale { .. } | DequantError::BadBlock { .. }) => {}
                Err(e) => panic!("tensor {}: {e}", t.name()),
            }
        }
    }
    let _ = content.metadata().get_str("general.architecture");
});
