//! Byte buffers aligned to 64 bytes (one cache line, one AVX-512 register),
//! so kernel loads never split a cache line.

/// One 64-byte, 64-aligned chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

const _: () = assert!(std::mem::size_of::<Line>() == 64);

/// A growable byte buffer whose start is 64-byte aligned and whose length is
/// a multiple of 64.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlignedBytes {
    lines: Vec<Line>,
}

impl AlignedBytes {
    /// `len` bytes (rounded up to a multiple of 64), all set to `fill`.
    pub fn filled(len: usize, fill: u8) -> Self {
        AlignedBytes {
            lines: vec![Line([fill; 64]); len.div_ceil(64)],
        }
    }

    /// Resizes to `len` bytes (rounded up to a multiple of 64); new bytes
    /// are `fill`. Shrinking keeps the allocation, so a buffer that goes
    /// back and forth between sizes allocates only for the largest.
    pub fn resize(&mut self, len: usize, fill: u8) {
        self.lines.resize(len.div_ceil(64), Line([fill; 64]));
    }

    /// Bytes as a slice.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Line` is `repr(C)` over `[u8; 64]` with no padding (size
        // asserted above), so the lines are `64 * len` contiguous initialised bytes.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64)
        }
    }

    /// Bytes as a mutable slice.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the borrow is unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.lines.as_mut_ptr().cast::<u8>(),
                self.lines.len() * 64,
            )
        }
    }

    /// Bytes reinterpreted as signed.
    pub fn as_i8(&self) -> &[i8] {
        let b = self.as_bytes();
        // SAFETY: i8 and u8 have the same size and alignment and every bit
        // pattern is valid for both.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<i8>(), b.len()) }
    }

    /// Bytes reinterpreted as signed, mutable.
    pub fn as_i8_mut(&mut self) -> &mut [i8] {
        let b = self.as_bytes_mut();
        // SAFETY: as in `as_i8`; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<i8>(), b.len()) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.lines.len() * 64
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded_up() {
        let b = AlignedBytes::filled(65, 7);
        assert_eq!(b.len(), 128);
        assert_eq!(b.as_bytes().as_ptr() as usize % 64, 0);
        assert!(b.as_bytes().iter().all(|&x| x == 7));
    }
}
