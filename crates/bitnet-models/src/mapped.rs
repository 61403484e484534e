//! Shared, read-only memory maps of model files.
//!
//! Tensors that stay in the file's encoding ([`crate::float_matrix`]) hold
//! an `Arc` of the map, so the file stays mapped as long as they live.
//! Tensors that are converted at load (ternary layers repacked for the
//! kernels) are read once; [`release`] then tells the kernel their pages
//! are not needed, so the file's copy does not stay resident beside ours.

use memmap2::Mmap;

/// Drops `bytes` (a sub-slice of `map`) from this process's resident set.
/// Later reads of the range fault the pages back in from the file, so this
/// only costs time if the range is read again. Best effort: errors (or a
/// slice not inside `map`) are ignored, since residency is not correctness.
pub(crate) fn release(map: &Mmap, bytes: &[u8]) {
    let base = map.as_ptr() as usize;
    let at = bytes.as_ptr() as usize;
    if bytes.is_empty() || at < base || at + bytes.len() > base + map.len() {
        return;
    }
    #[cfg(unix)]
    {
        // Only whole pages strictly inside the range, so neighbouring
        // tensors that share a page stay resident.
        let page = 4096;
        let start = (at - base).next_multiple_of(page);
        let end = (at - base + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the map is a read-only private file mapping that this
            // process never writes, so MADV_DONTNEED only discards clean
            // pages; any later read sees the same file bytes again.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Offset of `bytes` inside `whole`, if it lies there.
pub(crate) fn offset_in(whole: &[u8], bytes: &[u8]) -> Option<usize> {
    let base = whole.as_ptr() as usize;
    let at = bytes.as_ptr() as usize;
    (at >= base && at + bytes.len() <= base + whole.len()).then(|| at - base)
}
