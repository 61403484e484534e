//! `bitnet doctor`: system validation. Prints the CPU and its SIMD features,
//! the kernel each operation dispatches to, a self-test of every fast kernel
//! against the scalar reference, the measured memory read bandwidth, and the
//! ternary GEMV throughput on the 2B-4T layer shapes as a fraction of it.
//! Exits non-zero when a self-test fails.

use anyhow::{Context, bail};
use bitnet_core::system;
use bitnet_core::{Parallelism, build_pool};
use bitnet_quant::formats::runtime::PackedTernary;
use bitnet_quant::kernels::selftest::self_test;
use bitnet_quant::kernels::{Backend, TernaryKernel};
use bitnet_quant::quantize::int8::QuantizedActivations;
use std::time::Instant;

/// Arguments of `bitnet doctor`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Smaller buffers and fewer passes: a check in about a second rather
    /// than a measurement.
    #[arg(long)]
    quick: bool,
    /// Thread counts to measure with (default: 1 and all logical CPUs).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Also measure each CUDA device's ternary matmul bandwidth on the
    /// 2B-4T layer shapes against a device-to-device copy.
    #[arg(long)]
    gpu_bench: bool,
}

/// The 2B-4T ternary layer shapes `(rows, cols, name)`.
const SHAPES_2B4T: [(usize, usize, &str); 4] = [
    (2560, 2560, "q/o proj"),
    (640, 2560, "k/v proj"),
    (6912, 2560, "gate/up proj"),
    (2560, 6912, "down proj"),
];

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let cpus = system::logical_cpus();
    let mut threads = args.threads.clone();
    if threads.is_empty() {
        threads = if cpus > 1 { vec![1, cpus] } else { vec![1] };
    }
    if threads.contains(&0) {
        bail!("--threads: thread counts must be at least 1");
    }

    println!("BitNet-Rust doctor");
    println!("\nCPU");
    println!("  model       {}", system::cpu_name());
    println!("  logical     {cpus} CPUs");
    if let Some(c) = system::largest_cache_bytes() {
        println!("  last cache  {} MiB", c >> 20);
    }
    let features: Vec<String> = system::simd_features()
        .into_iter()
        .map(|(name, on)| format!("{name}{}", if on { "+" } else { "-" }))
        .collect();
    println!("  SIMD        {}", features.join(" "));

    let best = Backend::detect();
    println!("\nDispatch");
    // AMX tiles serve many tokens; one token runs the VNNI kernel.
    let gemv = if best == Backend::Amx {
        Backend::Avx512Vnni
    } else {
        best
    };
    println!("  ternary x int8 GEMV (decode)    {gemv}");
    println!("  ternary x int8 GEMM (prefill)   {best}");
    println!("  int8 per-token quantize         scalar (round half to even)");
    println!("  f32 matmul, linear algebra      faer");

    println!("\nSelf-test: every fast kernel against the scalar reference (exact)");
    let mut failed = false;
    for backend in Backend::ALL
        .into_iter()
        .filter(|b| *b != Backend::Reference)
    {
        match self_test(backend) {
            None => println!("  {:<12} skipped (CPU lacks it)", backend.name()),
            Some(r) if r.passed() => {
                println!(
                    "  {:<12} PASS ({} shapes, GEMV + GEMM)",
                    backend.name(),
                    r.cases
                )
            }
            Some(r) => {
                failed = true;
                println!("  {:<12} FAIL", backend.name());
                for f in &r.failures {
                    println!("      {f}");
                }
            }
        }
    }

    // Buffers well above the last-level cache so reads come from memory.
    let cache = system::largest_cache_bytes().unwrap_or(32 << 20);
    let buffer = if args.quick {
        64 << 20
    } else {
        (2 * cache).clamp(512 << 20, 1 << 30)
    };
    let passes = if args.quick { 2 } else { 5 };
    let pools = threads
        .iter()
        .map(|&n| build_pool(n).with_context(|| format!("building a pool of {n} threads")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!(
        "\nMemory read bandwidth ({} MiB buffer, best of {passes})",
        buffer >> 20
    );
    let mut bandwidth = Vec::new();
    for (n, pool) in threads.iter().zip(&pools) {
        let bw = system::measure_read_bandwidth(buffer, passes, Parallelism::Pool(pool));
        println!("  {n} thread{}  {:6.1} GB/s", plural(*n), bw / 1e9);
        bandwidth.push(bw);
    }

    let kernel = TernaryKernel::detect();
    println!(
        "\nTernary GEMV on the 2B-4T shapes ({}, weights streamed from memory)",
        kernel.backend()
    );
    println!(
        "  {:<14} {:>12} {:>8} {:>10} {:>9} {:>11}",
        "layer", "shape", "threads", "GB/s", "% of bw", "Gweights/s"
    );
    for &(rows, cols, name) in &SHAPES_2B4T {
        let copies = WeightSet::new(rows, cols, buffer)?;
        let x = activations(cols)?;
        for ((n, pool), bw) in threads.iter().zip(&pools).zip(&bandwidth) {
            let secs = copies.time_gemv(&kernel, &x, Parallelism::Pool(pool), passes)?;
            let bytes = copies.bytes_per_matrix() as f64 / secs;
            println!(
                "  {:<14} {:>12} {:>8} {:>10.1} {:>8.0}% {:>11.1}",
                name,
                format!("{rows}x{cols}"),
                n,
                bytes / 1e9,
                100.0 * bytes / bw,
                (rows * cols) as f64 / secs / 1e9
            );
        }
    }
    failed |= cuda(args.gpu_bench);
    failed |= gpus();
    if failed {
        bail!("a kernel self-test failed: do not trust this build on this machine");
    }
    Ok(())
}

/// Lists the GPU adapters and runs the GPU self-test on each; returns
/// whether one failed.
#[cfg(feature = "wgpu")]
fn gpus() -> bool {
    use bitnet_wgpu::{AdapterChoice, GpuContext, selftest};
    let adapters = bitnet_wgpu::adapters();
    println!("\nGPUs (wgpu: Vulkan, Metal, DX12)");
    if adapters.is_empty() {
        println!("  none found (no Vulkan/Metal/DX12 driver); --device auto runs on the CPU");
        return false;
    }
    let mut failed = false;
    for a in &adapters {
        println!(
            "  wgpu:{}  {} ({}, {}{}), driver {}, storage binding limit {} MiB",
            a.index,
            a.name,
            a.backend,
            a.kind,
            if a.hardware {
                ""
            } else {
                ", software: auto skips it"
            },
            a.driver,
            a.max_binding_bytes >> 20
        );
        let report = GpuContext::open(AdapterChoice::Index(a.index)).and_then(selftest::run);
        match report {
            Ok(r) => {
                for k in &r.kernels {
                    let codes = match k.codes_exact {
                        Some(true) => ", codes exact",
                        Some(false) => ", codes DIFFER",
                        None => "",
                    };
                    println!(
                        "      {:<34} {} (max diff {:.1e} of the largest{codes})",
                        k.kernel,
                        if k.passed() { "PASS" } else { "FAIL" },
                        k.max_rel_diff
                    );
                }
                println!(
                    "      {:<34} {} (logits: median position {:.1e}, worst {:.1e}; greedy {} tokens {})",
                    "whole model (tiny, random)",
                    if r.passed() { "PASS" } else { "FAIL" },
                    r.model_median_rel_diff,
                    r.model_max_rel_diff,
                    r.greedy_tokens,
                    if r.greedy_equal { "equal" } else { "DIFFER" }
                );
                println!(
                    "      {:<34} {} (logit rows: median {:.1e} of the largest)",
                    "3 sequences in one pass (slots)",
                    if r.slots_median_rel_diff <= selftest::KERNEL_TOLERANCE {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                    r.slots_median_rel_diff
                );
                failed |= !r.passed();
            }
            Err(e) => {
                // A GPU that cannot run the kernels is reported, not fatal:
                // the CPU path still works.
                println!("      self-test could not run: {e}");
            }
        }
    }
    failed
}

/// Lists the CUDA devices, runs the CUDA self-test on each (and the
/// bandwidth measurement with `--gpu-bench`); returns whether one failed.
#[cfg(feature = "cuda")]
fn cuda(bench: bool) -> bool {
    use bitnet_cuda::{CudaDevice, bench::SHAPES_2B4T, bench::gemv_bandwidth, selftest};
    println!("\nGPUs (CUDA)");
    let devices = match bitnet_cuda::devices() {
        Ok(d) => d,
        Err(e) => {
            println!("  none usable: {e}");
            return false;
        }
    };
    if devices.is_empty() {
        println!("  the driver reports no device");
        return false;
    }
    if !bitnet_cuda::nvrtc_present() {
        println!("  {}", bitnet_cuda::Error::NoNvrtc);
    }
    let mut failed = false;
    for d in &devices {
        println!(
            "  cuda:{}  {} (compute {}.{}), {} MiB ({} MiB free), driver CUDA {}.{}",
            d.ordinal,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.total_memory >> 20,
            d.free_memory >> 20,
            d.driver_cuda.0,
            d.driver_cuda.1
        );
        let dev = match CudaDevice::open(d.ordinal) {
            Ok(dev) => dev,
            Err(e) => {
                println!("      could not open: {e}");
                continue;
            }
        };
        match selftest::run(&dev) {
            Ok(r) => {
                for k in &r.kernels {
                    let codes = match k.codes_exact {
                        Some(true) => ", codes exact",
                        Some(false) => ", codes DIFFER",
                        None => "",
                    };
                    println!(
                        "      {:<48} {} (max diff {:.1e} of the largest{codes})",
                        k.kernel,
                        if k.passed() { "PASS" } else { "FAIL" },
                        k.max_rel_diff
                    );
                }
                println!(
                    "      {:<48} {} (logits: median position {:.1e}, worst {:.1e}; greedy {} tokens {}; decode graph {})",
                    "whole model (tiny, random)",
                    if r.passed() { "PASS" } else { "FAIL" },
                    r.model_median_rel_diff,
                    r.model_max_rel_diff,
                    r.greedy_tokens,
                    if r.greedy_equal { "equal" } else { "DIFFER" },
                    if r.graph { "on" } else { "off" }
                );
                println!(
                    "      {:<48} {} (logit rows: median {:.1e} of the largest)",
                    "3 sequences in one pass (slots)",
                    if r.slots_median_rel_diff <= selftest::KERNEL_TOLERANCE {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                    r.slots_median_rel_diff
                );
                failed |= !r.passed();
            }
            Err(e) => println!("      self-test could not run: {e}"),
        }
        if bench {
            // The default build, then register caps for the one-token
            // matmul (more resident warps against fewer registers each).
            let runs: [(usize, &[&str]); 4] = [
                (1, &[]),
                (1, &["-DMATMUL_MIN_BLOCKS=6"]),
                (1, &["-DMATMUL_MIN_BLOCKS=8"]),
                (8, &[]),
            ];
            for (tokens, opts) in runs {
                let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
                match gemv_bandwidth(&dev, &SHAPES_2B4T, tokens, &opts) {
                    Ok(rep) => {
                        println!(
                            "      ternary matmul, {tokens} token{} per launch{} (copy bandwidth {:.0} GB/s):",
                            if tokens == 1 { "" } else { "s" },
                            if opts.is_empty() {
                                String::new()
                            } else {
                                format!(", {}", opts.join(" "))
                            },
                            rep.copy_gb_per_s
                        );
                        for r in &rep.results {
                            println!(
                                "        {:<36} {:>9.1} us  {:>7.0} GB/s  {:>5.1}% of copy",
                                r.shape,
                                r.micros,
                                r.gb_per_s,
                                100.0 * r.fraction_of_copy
                            );
                        }
                    }
                    Err(e) => println!("      bandwidth could not be measured: {e}"),
                }
            }
        }
    }
    failed
}

#[cfg(not(feature = "cuda"))]
fn cuda(_bench: bool) -> bool {
    println!("\nGPUs (CUDA): this build has no CUDA backend (the `cuda` feature is off)");
    false
}

#[cfg(not(feature = "wgpu"))]
fn gpus() -> bool {
    println!("\nGPUs: this build has no GPU backend (the `wgpu` feature is off)");
    false
}

fn plural(n: usize) -> &'static str {
    if n == 1 { " " } else { "s" }
}

fn activations(cols: usize) -> anyhow::Result<QuantizedActivations> {
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 7919) % 255) as f32 - 127.0)
        .collect();
    Ok(QuantizedActivations::quantize("doctor input", &x, 1, cols)?)
}

/// Enough copies of one weight matrix to exceed `total` bytes, cycled so
/// every GEMV reads its weights from memory rather than cache.
struct WeightSet {
    copies: Vec<PackedTernary>,
}

impl WeightSet {
    fn new(rows: usize, cols: usize, total: usize) -> anyhow::Result<Self> {
        let codes: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 2654435761) % 3) as i8 - 1)
            .collect();
        let one = PackedTernary::from_codes(&codes, rows, cols)?;
        let n = total.div_ceil(one.as_bytes().len()).max(2);
        Ok(WeightSet {
            copies: vec![one; n],
        })
    }

    fn bytes_per_matrix(&self) -> usize {
        self.copies[0].as_bytes().len()
    }

    /// Best seconds per GEMV over `passes` sweeps of all copies.
    fn time_gemv(
        &self,
        kernel: &TernaryKernel,
        x: &QuantizedActivations,
        par: Parallelism<'_>,
        passes: usize,
    ) -> anyhow::Result<f64> {
        let mut out = vec![0i32; self.copies[0].rows()];
        let mut best = f64::INFINITY;
        for _ in 0..passes {
            let start = Instant::now();
            for w in &self.copies {
                kernel.gemv(w, x, 0, &mut out, par)?;
            }
            best = best.min(start.elapsed().as_secs_f64() / self.copies.len() as f64);
        }
        std::hint::black_box(&out);
        Ok(best)
    }
}
