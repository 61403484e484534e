//! What machine this is: CPU name, SIMD features, cache size, and a measured
//! memory read bandwidth (the ceiling for memory-bound kernels such as
//! decode-time GEMV).

use crate::parallel::Parallelism;
use std::time::Instant;

/// The CPU's marketing name, where the OS tells it.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// SIMD features relevant to the kernels, with whether this CPU has each.
pub fn simd_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vec![
            ("sse4.2", has!("sse4.2")),
            ("avx", has!("avx")),
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avxvnni", has!("avxvnni")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vnni", has!("avx512vnni")),
            ("avx512bf16", has!("avx512bf16")),
        ]
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        vec![("neon", has!("neon")), ("dotprod", has!("dotprod"))]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

/// Size in bytes of the largest CPU cache the OS reports (Linux sysfs), if any.
pub fn largest_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| {
            let s = s.trim();
            let (num, mult) = match s.strip_suffix('K') {
                Some(n) => (n, 1024),
                None => match s.strip_suffix('M') {
                    Some(n) => (n, 1024 * 1024),
                    None => (s, 1),
                },
            };
            num.parse::<usize>().ok().map(|n| n * mult)
        })
        .max()
}

/// Sums a slice so the reads cannot be optimized away. Uses the widest
/// vector loads the CPU has, with independent accumulators, so the loop is
/// bound by memory rather than by instructions (a baseline-x86-64 build would
/// otherwise use 16-byte loads and under-report the bandwidth).
fn read_all(data: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { read_all_avx512(data) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { read_all_avx2(data) };
    }
    read_all_portable(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn read_all_avx512(data: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let chunks = data.chunks_exact(32);
    let tail = chunks.remainder();
    let mut acc = [_mm512_setzero_si512(); 4];
    for chunk in chunks {
        // Software prefetch as the kernels do, so the figure is the best a
        // core can read, not what the hardware prefetchers manage alone.
        _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(1024).cast());
        _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(1024 + 8).cast());
        _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(1024 + 16).cast());
        _mm_prefetch::<_MM_HINT_T0>(chunk.as_ptr().wrapping_add(1024 + 24).cast());
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `chunk` holds 32 u64, so words 8k..8k+8 are in bounds.
            let v = unsafe { _mm512_loadu_si512(chunk.as_ptr().add(8 * k).cast()) };
            *a = _mm512_add_epi64(*a, v);
        }
    }
    let sum = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    tail.iter()
        .fold(_mm512_reduce_add_epi64(sum) as u64, |a, &b| {
            a.wrapping_add(b)
        })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn read_all_avx2(data: &[u64]) -> u64 {
    read_all_portable(data)
}

#[inline(always)]
fn read_all_portable(data: &[u64]) -> u64 {
    let mut lanes = [0u64; 32];
    let chunks = data.chunks_exact(32);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.wrapping_add(v);
        }
    }
    lanes.iter().chain(tail).fold(0, |a, &b| a.wrapping_add(b))
}

/// Measured read bandwidth in bytes per second: the best of `passes` full
/// reads of a `bytes`-sized buffer (choose it well above the last-level
/// cache), split over the threads of `par`.
pub fn measure_read_bandwidth(bytes: usize, passes: usize, par: Parallelism<'_>) -> f64 {
    let words = (bytes / 8).max(8);
    // Touch every page so the first pass does not measure page faults.
    let data: Vec<u64> = (0..words as u64).collect();
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        sink ^= match par {
            Parallelism::Sequential => read_all(&data),
            Parallelism::Pool(pool) => {
                use rayon::prelude::*;
                let chunk = words.div_ceil(pool.current_num_threads());
                pool.install(|| {
                    data.par_chunks(chunk)
                        .map(read_all)
                        .reduce(|| 0, u64::wrapping_add)
                })
            }
        };
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_something_sane() {
        assert!(!cpu_name().is_empty());
        assert!(logical_cpus() >= 1);
        let bw = measure_read_bandwidth(1 << 20, 2, Parallelism::Sequential);
        assert!(bw.is_finite() && bw > 1e6, "{bw}");
    }

    #[test]
    fn read_all_sums() {
        let v: Vec<u64> = (1..=70).collect();
        assert_eq!(read_all(&v), 70 * 71 / 2);
    }
}
