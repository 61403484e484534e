//! Explicit parallelism ([`Parallelism`]): callers pass the rayon pool to use,
//! or run sequentially. The crate never touches rayon's or faer's global
//! settings.

use faer::Par;
use rayon::ThreadPool;

use crate::error::{Error, Result};

/// Where compute-heavy work (matmul, decompositions) runs.
#[derive(Clone, Copy, Debug, Default)]
pub enum Parallelism<'a> {
    /// Run on the calling thread.
    #[default]
    Sequential,
    /// Run inside the given pool using all of its threads.
    Pool(&'a ThreadPool),
}

impl Parallelism<'_> {
    /// Number of threads the work may use (1 for `Sequential`).
    pub fn threads(&self) -> usize {
        match self {
            Parallelism::Sequential => 1,
            Parallelism::Pool(pool) => pool.current_num_threads(),
        }
    }

    /// Rows per task when `rows` rows of cheap per-row work (norms,
    /// activations, quantizing a batch) are worth splitting over this
    /// pool: from 8 rows and 2 threads up, about four tasks per thread.
    /// `None`: run them on the calling thread.
    pub fn rows_per_task(&self, rows: usize) -> Option<usize> {
        let threads = self.threads();
        (rows >= 8 && threads > 1).then(|| rows.div_ceil(4 * threads))
    }

    /// Runs `f` with the matching faer [`Par`]. For a pool, `f` runs inside
    /// `pool.install` so faer's rayon calls land on that pool rather than the
    /// global one.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce(Par) -> R + Send) -> R {
        match self {
            Parallelism::Sequential => f(Par::Seq),
            Parallelism::Pool(pool) => {
                let n = pool.current_num_threads();
                pool.install(|| f(Par::rayon(n)))
            }
        }
    }
}

/// Builds a dedicated rayon pool with `threads` threads (`threads >= 1`).
pub fn build_pool(threads: usize) -> Result<ThreadPool> {
    if threads == 0 {
        return Err(Error::InvalidArgument {
            op: crate::ops::OpKind::BuildPool,
            msg: "thread count must be at least 1".into(),
        });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|source| Error::ThreadPool { threads, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_threads_and_par_mapping() {
        let pool = build_pool(2).unwrap();
        let p = Parallelism::Pool(&pool);
        assert_eq!(p.threads(), 2);
        let (par, inside) = p.run(|par| (par, rayon::current_thread_index().is_some()));
        assert_eq!(par, Par::rayon(2));
        assert!(inside, "work must run on the provided pool");
        assert_eq!(Parallelism::Sequential.threads(), 1);
        assert_eq!(p.rows_per_task(7), None);
        assert_eq!(p.rows_per_task(8), Some(1));
        assert_eq!(p.rows_per_task(64), Some(8));
        assert_eq!(Parallelism::Sequential.rows_per_task(64), None);
        assert_eq!(Parallelism::Sequential.run(|p| p), Par::Seq);
    }

    #[test]
    fn zero_threads_is_error() {
        assert!(matches!(build_pool(0), Err(Error::InvalidArgument { .. })));
    }
}
