//! The safetensors header parser (`SafetensorsCheckpoint::from_bytes`, the
//! path every `.safetensors` file takes) on arbitrary bytes: an error, or a
//! checkpoint whose every tensor is readable with exactly `elements x dtype
//! size` bytes and converts (or refuses to convert) without panicking.
#![no_main]

use bitnet_models::safetensors::SafetensorsCheckpoint;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(ckpt) = SafetensorsCheckpoint::from_bytes(data.to_vec(), Path::new("<fuzz>")) else {
        return;
    };
    for name in ckpt.names() {
        let t = ckpt.raw(name).expect("a parsed tensor must be readable");
        let elements = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .expect("a parsed shape must not overflow");
        assert_eq!(
            t.data.len() as u128 * 8,
            elements as u128 * t.dtype.bitsize() as u128,
            "tensor {name}"
        );
        let shape = t.shape.to_vec();
        if let Ok(v) = ckpt.f32(name, &shape) {
            assert_eq!(v.len(), elements, "tensor {name}");
        }
        let _ = ckpt.scalar_f32(name);
        if let Ok(b) = ckpt.u8(name, &shape) {
            assert_eq!(b.len(), elements, "tensor {name}");
        }
        // Matrices the engine keeps in the file's encoding (embeddings).
        if let [rows, cols] = shape[..]
            && let Ok(m) = ckpt.float_matrix(name, rows, cols)
            && rows > 0
        {
            let mut row = vec![0.0f32; cols];
            m.row_into(rows - 1, &mut row);
            let _ = m.dot_row(0, &row);
        }
    }
});
