//! Key/value caches: for each layer, the rotated keys and the values of
//! every position so far, stored in blocks of `block_size` positions.
//!
//! A cache either owns one block as large as its capacity ([`KvCache::new`],
//! for a single sequence), or takes fixed-size blocks on demand from a
//! [`KvPool`] shared by many sequences ([`KvCache::paged`]): a paged cache
//! for a server, where one memory budget is shared by all sequences and a
//! sequence holds only the blocks its positions fill. A paged cache reserves
//! the blocks it may need when it is created, so a sequence that was
//! admitted never runs out of memory half-way; it returns every block to
//! the pool when dropped.
//!
//! A block holds `[layer][key|value][position][kv_dim]` contiguously, so the
//! attention of one layer walks each block as one `[positions, kv_dim]` run.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Keys and values of one sequence for every layer.
#[derive(Debug)]
pub struct KvCache {
    layers: usize,
    kv_dim: usize,
    block_size: usize,
    capacity: usize,
    len: usize,
    blocks: Vec<Block>,
    pool: Option<Arc<KvPool>>,
    /// Blocks reserved in the pool and not yet taken.
    reserved: usize,
}

/// One block of positions, taken from a pool (`id`) or owned outright.
#[derive(Debug)]
struct Block {
    id: usize,
    data: Box<[f32]>,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_dim` wide keys, holding up
    /// to `capacity` positions in one block allocated now.
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> Self {
        let data = vec![0.0; layers * 2 * capacity * kv_dim].into_boxed_slice();
        KvCache {
            layers,
            kv_dim,
            block_size: capacity.max(1),
            capacity,
            len: 0,
            blocks: vec![Block { id: 0, data }],
            pool: None,
            reserved: 0,
        }
    }

    /// An empty cache taking its blocks from `pool`, holding up to
    /// `capacity` positions. The blocks for the first `reserve` positions
    /// (at most `capacity`) are reserved now: they are guaranteed to be
    /// there when the positions are written. Fails with
    /// [`Error::KvBudgetExhausted`] when the pool cannot reserve them.
    pub fn paged(pool: &Arc<KvPool>, capacity: usize, reserve: usize) -> Result<Self> {
        let blocks = reserve.min(capacity).div_ceil(pool.block_size);
        pool.reserve(blocks)?;
        Ok(KvCache {
            layers: pool.layers,
            kv_dim: pool.kv_dim,
            block_size: pool.block_size,
            capacity,
            len: 0,
            blocks: Vec::new(),
            pool: Some(Arc::clone(pool)),
            reserved: blocks,
        })
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// Width of one key or value row.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// Blocks this cache holds (a pool's blocks, or its one own block).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
    /// Forgets every position (the blocks are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Drops positions from `len` on (e.g. to re-run from a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `n` more positions fit, and takes the blocks they need
    /// from the pool (from this cache's reservation first).
    pub(crate) fn reserve(&mut self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::ContextFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let needed = (self.len + n).div_ceil(self.block_size);
        if needed > self.blocks.len() {
            let more = needed - self.blocks.len();
            let from_reservation = more.min(self.reserved);
            let taken = pool.take(from_reservation, more - from_reservation)?;
            self.reserved -= from_reservation;
            self.blocks.extend(taken);
        }
        Ok(())
    }

    fn offsets(&self, layer: usize) -> (usize, usize) {
        let plane = self.block_size * self.kv_dim;
        (layer * 2 * plane, (layer * 2 + 1) * plane)
    }

    /// Writes keys and values (`n` rows each) of layer `layer` at positions
    /// `len..len + n`; [`Self::advance`] commits them after the last layer.
    /// [`Self::reserve`] must have made room.
    pub(crate) fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let (kd, bs) = (self.kv_dim, self.block_size);
        let (k_off, v_off) = self.offsets(layer);
        let rows = k.len() / kd;
        let mut row = 0;
        while row < rows {
            let pos = self.len + row;
            let (b, within) = (pos / bs, pos % bs);
            let run = (bs - within).min(rows - row);
            let data = &mut self.blocks[b].data;
            let (src, dst) = (row * kd..(row + run) * kd, within * kd..(within + run) * kd);
            data[k_off + dst.start..k_off + dst.end].copy_from_slice(&k[src.clone()]);
            data[v_off + dst.start..v_off + dst.end].copy_from_slice(&v[src]);
            row += run;
        }
    }

    /// Keys and values of `layer` for positions `0..upto`, as consecutive
    /// runs `(keys, values)` of `[positions, kv_dim]` each, one per block.
    pub(crate) fn runs(&self, layer: usize, upto: usize) -> impl Iterator<Item = (&[f32], &[f32])> {
        let (kd, bs) = (self.kv_dim, self.block_size);
        let (k_off, v_off) = self.offsets(layer);
        self.blocks
            .iter()
            .take(upto.div_ceil(bs))
            .enumerate()
            .map(move |(b, block)| {
                let rows = (upto - b * bs).min(bs);
                (
                    &block.data[k_off..k_off + rows * kd],
                    &block.data[v_off..v_off + rows * kd],
                )
            })
    }

    /// Commits `n` positions written by [`Self::write`].
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(std::mem::take(&mut self.blocks), self.reserved);
        }
    }
}

/// Fixed-size KV blocks under one memory budget, shared by the paged caches
/// of many sequences (cheap to share: the pool is behind an `Arc`).
///
/// Blocks are allocated the first time they are taken and kept for reuse
/// after that, so memory never exceeds the budget. Taking a block picks the
/// lowest free id, which keeps the free ids in long runs.
///
/// ```
/// use bitnet_inference::kv_cache::{KvCache, KvPool};
///
/// // 2 layers, keys 8 wide, blocks of 16 positions, room for 4 blocks.
/// let pool = KvPool::new(2, 8, 16, 4 * KvPool::block_bytes_for(2, 8, 16))?;
/// let cache = KvCache::paged(&pool, 64, 40)?; // reserves 3 blocks
/// assert_eq!(pool.stats().reserved, 3);
/// assert!(KvCache::paged(&pool, 64, 40).is_err()); // only 1 left
/// drop(cache);
/// assert_eq!(pool.stats().free, 4);
/// # Ok::<(), bitnet_inference::Error>(())
/// ```
#[derive(Debug)]
pub struct KvPool {
    layers: usize,
    kv_dim: usize,
    block_size: usize,
    total: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    /// Ids not taken by any cache.
    free_ids: BTreeSet<usize>,
    /// Storage of blocks not taken, by id (allocated on first use).
    spare: Vec<Option<Box<[f32]>>>,
    /// Blocks promised to caches and not yet taken.
    reserved: usize,
}

/// A snapshot of a [`KvPool`]'s blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolStats {
    /// Blocks the budget allows.
    pub total: usize,
    /// Blocks holding positions of some sequence.
    pub in_use: usize,
    /// Blocks promised to admitted sequences but not yet filled.
    pub reserved: usize,
    /// Blocks neither in use nor reserved.
    pub free: usize,
    /// The longest run of consecutive block ids not in use.
    pub largest_free_run: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

impl KvPool {
    /// Bytes of one block of `block_size` positions for `layers` layers of
    /// `kv_dim` wide keys and values.
    pub fn block_bytes_for(layers: usize, kv_dim: usize, block_size: usize) -> usize {
        layers * 2 * block_size * kv_dim * std::mem::size_of::<f32>()
    }

    /// A pool of as many blocks of `block_size` positions as fit in
    /// `budget_bytes`.
    pub fn new(
        layers: usize,
        kv_dim: usize,
        block_size: usize,
        budget_bytes: usize,
    ) -> Result<Arc<Self>> {
        if layers == 0 || kv_dim == 0 || block_size == 0 {
            return Err(Error::InvalidArgument(
                "a KV pool needs layers, a key width and a block size above zero".into(),
            ));
        }
        let block = Self::block_bytes_for(layers, kv_dim, block_size);
        let total = budget_bytes / block;
        if total == 0 {
            return Err(Error::InvalidArgument(format!(
                "a KV budget of {budget_bytes} bytes holds no block of {block_size} positions \
                 ({block} bytes)"
            )));
        }
        Ok(Arc::new(KvPool {
            layers,
            kv_dim,
            block_size,
            total,
            state: Mutex::new(PoolState {
                free_ids: (0..total).collect(),
                spare: (0..total).map(|_| None).collect(),
                reserved: 0,
            }),
        }))
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks the budget allows.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks needed for `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the counts half-updated
        // (each update is one statement), so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `blocks` more could be reserved now.
    pub fn can_reserve(&self, blocks: usize) -> bool {
        let s = self.lock();
        s.free_ids.len() - s.reserved >= blocks
    }

    fn reserve(&self, blocks: usize) -> Result<()> {
        let mut s = self.lock();
        let available = s.free_ids.len() - s.reserved;
        if blocks > available {
            return Err(Error::KvBudgetExhausted {
                needed: blocks,
                available,
                total: self.total,
            });
        }
        s.reserved += blocks;
        Ok(())
    }

    /// Takes `reserved` blocks out of the reservation and `extra` more.
    fn take(&self, reserved: usize, extra: usize) -> Result<Vec<Block>> {
        let mut s = self.lock();
        let available = s.free_ids.len() - s.reserved;
        if extra > available {
            return Err(Error::KvBudgetExhausted {
                needed: extra,
                available,
                total: self.total,
            });
        }
        s.reserved -= reserved;
        let len = Self::block_bytes_for(self.layers, self.kv_dim, self.block_size) / 4;
        let mut out = Vec::with_capacity(reserved + extra);
        for _ in 0..reserved + extra {
            let id = s.free_ids.pop_first().expect("counted above");
            let data = s.spare[id]
                .take()
                .unwrap_or_else(|| vec![0.0; len].into_boxed_slice());
            out.push(Block { id, data });
        }
        Ok(out)
    }

    fn give_back(&self, blocks: Vec<Block>, reserved: usize) {
        let mut s = self.lock();
        s.reserved -= reserved;
        for b in blocks {
            s.free_ids.insert(b.id);
            s.spare[b.id] = Some(b.data);
        }
    }

    /// Blocks in use, reserved and free, and the longest free run.
    pub fn stats(&self) -> KvPoolStats {
        let s = self.lock();
        let (mut run, mut best, mut prev) = (0usize, 0usize, None::<usize>);
        for &id in &s.free_ids {
            run = if prev == Some(id.wrapping_sub(1)) {
                run + 1
            } else {
                1
            };
            best = best.max(run);
            prev = Some(id);
        }
        KvPoolStats {
            total: self.total,
            in_use: self.total - s.free_ids.len(),
            reserved: s.reserved,
            free: s.free_ids.len() - s.reserved,
            largest_free_run: best,
            block_size: self.block_size,
            block_bytes: Self::block_bytes_for(self.layers, self.kv_dim, self.block_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, kd: usize, base: f32) -> Vec<f32> {
        (0..n * kd).map(|i| base + i as f32).collect()
    }

    /// Writes `chunks` of positions into `cache` and checks every layer
    /// reads back what was written, across block boundaries.
    fn fill_and_check(cache: &mut KvCache, chunks: &[usize]) {
        let kd = cache.kv_dim();
        let mut expected: Vec<Vec<f32>> = vec![Vec::new(); cache.layers()];
        for &n in chunks {
            cache.reserve(n).unwrap();
            for (l, exp) in expected.iter_mut().enumerate() {
                let k = rows(n, kd, (l * 1000 + cache.len() * kd) as f32);
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                cache.write(l, &k, &v);
                exp.extend_from_slice(&k);
            }
            cache.advance(n);
        }
        for (l, exp) in expected.iter().enumerate() {
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for (k, v) in cache.runs(l, cache.len()) {
                keys.extend_from_slice(k);
                values.extend_from_slice(v);
            }
            assert_eq!(&keys, exp);
            assert_eq!(values, exp.iter().map(|x| -x).collect::<Vec<_>>());
        }
    }

    #[test]
    fn contiguous_and_paged_caches_read_back_what_was_written() {
        let mut c = KvCache::new(3, 4, 20);
        fill_and_check(&mut c, &[7, 1, 1, 11]);
        let pool = KvPool::new(3, 4, 4, 100 * KvPool::block_bytes_for(3, 4, 4)).unwrap();
        let mut p = KvCache::paged(&pool, 20, 8).unwrap();
        fill_and_check(&mut p, &[7, 1, 1, 11]);
        assert_eq!(p.blocks(), 5);
        assert!(p.reserve(1).is_err(), "capacity 20 is full");
    }

    #[test]
    fn pool_accounts_for_reservations_and_returns_blocks() {
        let pool = KvPool::new(1, 2, 4, 6 * KvPool::block_bytes_for(1, 2, 4)).unwrap();
        let mut a = KvCache::paged(&pool, 24, 9).unwrap(); // 3 blocks reserved
        assert_eq!(pool.stats().reserved, 3);
        a.reserve(5).unwrap(); // takes 2 of them
        let s = pool.stats();
        assert_eq!((s.in_use, s.reserved, s.free), (2, 1, 3));
        let b = KvCache::paged(&pool, 24, 12).unwrap();
        assert!(matches!(
            KvCache::paged(&pool, 24, 1),
            Err(Error::KvBudgetExhausted { available: 0, .. })
        ));
        drop(b);
        assert_eq!(pool.stats().free, 3);
        drop(a);
        let s = pool.stats();
        assert_eq!(
            (s.in_use, s.reserved, s.free, s.largest_free_run),
            (0, 0, 6, 6)
        );
    }

    #[test]
    fn largest_free_run_sees_fragmentation() {
        let pool = KvPool::new(1, 1, 1, 5 * KvPool::block_bytes_for(1, 1, 1)).unwrap();
        let mut caches: Vec<KvCache> = (0..5)
            .map(|_| {
                let mut c = KvCache::paged(&pool, 1, 1).unwrap();
                c.reserve(1).unwrap();
                c
            })
            .collect();
        caches.remove(3);
        caches.remove(1);
        let s = pool.stats();
        assert_eq!((s.in_use, s.free, s.largest_free_run), (3, 2, 1));
        caches.remove(1); // id 2
        assert_eq!(pool.stats().largest_free_run, 3);
    }

    #[test]
    fn a_budget_below_one_block_is_refused() {
        assert!(KvPool::new(2, 8, 16, 100).is_err());
        assert!(KvPool::new(0, 8, 16, 1 << 20).is_err());
    }
}
