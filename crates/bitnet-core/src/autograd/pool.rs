//! Buffers a tape hands back for the next one to reuse.
//!
//! A training step records the same ops on the same shapes as the step
//! before it, so every value and gradient buffer it needs was already
//! allocated once. A [`BufferPool`] keeps them between steps: a tape built
//! with [`Tape::with_pool`](super::Tape::with_pool) takes its buffers from
//! the pool and [`Tape::into_pool`](super::Tape::into_pool) gives them
//! all back. An op writes every element of a buffer it takes, so a reused
//! buffer is neither zeroed nor fetched through `malloc`'s free lists (in a
//! `perf` profile of a training step, `memset` and `malloc` had been 8% of
//! samples).
//!
//! Buffers are matched by exact length. A [`BufferPool::trim`] ends a
//! round: each length keeps at most as many buffers as were asked for since
//! the last trim, so a pool holds one step's working set and no more, even
//! when buffers made elsewhere (a loss, a seed) are given to it.

use std::collections::HashMap;

/// Free `f32` and `i8` buffers, by length. See the [module docs](self).
#[derive(Default)]
pub struct BufferPool {
    f32s: HashMap<usize, Class<f32>>,
    i8s: HashMap<usize, Class<i8>>,
}

/// Free buffers of one length, and how many were asked for this round.
struct Class<T> {
    free: Vec<Vec<T>>,
    asked: usize,
}

impl<T> Default for Class<T> {
    fn default() -> Self {
        Class {
            free: Vec::new(),
            asked: 0,
        }
    }
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer of `n` values whose contents are unspecified: the caller
    /// writes every element before reading any. (Debug builds fill a reused
    /// buffer with NaN, so a read of a stale value shows up in tests.)
    pub fn take(&mut self, n: usize) -> Vec<f32> {
        take_stale(&mut self.f32s, n, f32::NAN)
    }

    /// A copy of `src` in a pooled buffer.
    pub fn take_copy(&mut self, src: &[f32]) -> Vec<f32> {
        match take_from(&mut self.f32s, src.len()) {
            Some(mut buf) => {
                buf.copy_from_slice(src);
                buf
            }
            None => src.to_vec(),
        }
    }

    /// An `i8` buffer of `n` values with unspecified contents (as
    /// [`take`](Self::take); debug builds fill a reused one with `i8::MIN`).
    pub fn take_i8(&mut self, n: usize) -> Vec<i8> {
        take_stale(&mut self.i8s, n, i8::MIN)
    }

    /// Keeps `buf` for a later [`take`](Self::take) of its length.
    pub fn give(&mut self, buf: Vec<f32>) {
        give_to(&mut self.f32s, buf);
    }

    /// Keeps `buf` for a later [`take_i8`](Self::take_i8) of its length.
    pub fn give_i8(&mut self, buf: Vec<i8>) {
        give_to(&mut self.i8s, buf);
    }

    /// Ends a round: keeps, of each length, at most as many buffers as
    /// were asked for since the last trim, and frees the rest.
    pub fn trim(&mut self) {
        fn trim_map<T>(map: &mut HashMap<usize, Class<T>>) {
            map.retain(|_, c| {
                c.free.truncate(c.asked);
                std::mem::take(&mut c.asked) > 0
            });
        }
        trim_map(&mut self.f32s);
        trim_map(&mut self.i8s);
    }

    /// Bytes held in free buffers.
    pub fn bytes(&self) -> usize {
        let f: usize = self.f32s.iter().map(|(n, c)| n * c.free.len() * 4).sum();
        let i: usize = self.i8s.iter().map(|(n, c)| n * c.free.len()).sum();
        f + i
    }
}

/// A reused buffer of length `n` (filled with `poison` in debug builds),
/// else a new one of default values.
fn take_stale<T: Copy + Default>(
    map: &mut HashMap<usize, Class<T>>,
    n: usize,
    poison: T,
) -> Vec<T> {
    match take_from(map, n) {
        Some(mut buf) => {
            if cfg!(debug_assertions) {
                buf.fill(poison);
            }
            buf
        }
        None => vec![T::default(); n],
    }
}

fn take_from<T>(map: &mut HashMap<usize, Class<T>>, n: usize) -> Option<Vec<T>> {
    if n == 0 {
        return None;
    }
    let class = map.entry(n).or_default();
    class.asked += 1;
    class.free.pop()
}

fn give_to<T>(map: &mut HashMap<usize, Class<T>>, buf: Vec<T>) {
    // `take` never reuses an empty buffer.
    if !buf.is_empty() {
        map.entry(buf.len()).or_default().free.push(buf);
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("f32_lengths", &self.f32s.len())
            .field("i8_lengths", &self.i8s.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_for_its_length_only() {
        let mut pool = BufferPool::new();
        let mut a = pool.take(4);
        a.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.bytes(), 16);
        let other = pool.take(3);
        assert_ne!(other.as_ptr(), ptr);
        let again = pool.take(4);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(pool.bytes(), 0);
        pool.give(again);
        // Tests build with debug assertions: a reused buffer is poisoned.
        let reused = pool.take(4);
        assert_eq!(reused.as_ptr(), ptr);
        assert!(reused.iter().all(|x| x.is_nan()) || !cfg!(debug_assertions));
    }

    #[test]
    fn trim_keeps_only_what_the_round_asked_for() {
        let mut pool = BufferPool::new();
        pool.give(vec![0.0; 8]);
        pool.give(vec![0.0; 8]);
        pool.give(vec![0.0; 2]);
        pool.give_i8(vec![0; 5]);
        let b = pool.take(8);
        pool.give(b);
        pool.trim();
        // One buffer of length 8 was asked for this round; none of length
        // 2, nor codes.
        assert_eq!(pool.bytes(), 32);
        pool.trim();
        assert_eq!(pool.bytes(), 0);
    }
}
