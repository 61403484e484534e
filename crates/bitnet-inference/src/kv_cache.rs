//! The key/value cache of one sequence: for each layer, the rotated keys and
//! the values of every position so far, `[positions, kv_dim]` row-major,
//! allocated once at the sequence's capacity.

use crate::error::{Error, Result};

/// Keys and values of one sequence for every layer.
#[derive(Clone, Debug)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_dim` wide keys, holding up
    /// to `capacity` positions.
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> Self {
        KvCache {
            keys: vec![vec![0.0; kv_dim * capacity]; layers],
            values: vec![vec![0.0; kv_dim * capacity]; layers],
            kv_dim,
            capacity,
            len: 0,
        }
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
        self.keys.len()
    }
    /// Width of one key or value row.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
    /// Forgets every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Drops positions from `len` on (e.g. to re-run from a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `n` more positions fit.
    pub(crate) fn reserve(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::ContextFull {
                needed: self.len + n,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes keys and values (`n` rows each) of layer `layer` at positions
    /// `len..len + n`; [`Self::advance`] commits them after the last layer.
    pub(crate) fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let start = self.len * self.kv_dim;
        self.keys[layer][start..start + k.len()].copy_from_slice(k);
        self.values[layer][start..start + v.len()].copy_from_slice(v);
    }

    /// Keys and values of `layer` for positions `0..upto`.
    pub(crate) fn read(&self, layer: usize, upto: usize) -> (&[f32], &[f32]) {
        let n = upto * self.kv_dim;
        (&self.keys[layer][..n], &self.values[layer][..n])
    }

    /// Commits `n` positions written by [`Self::write`].
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
