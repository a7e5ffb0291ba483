//! `cargo bench`: every kernel at the original model's shapes at batches 1, 64 and 256, GPU vs
//! the CPU backend.
//! Options after `--`: `--quick` (2 repetitions instead of 5) and a name filter.

use mien::bench;
use mien::gpu::{BackendChoice, Gpu, GpuOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let reps = if args.iter().any(|a| a == "--quick") { 2 } else { 5 };
    let filter = args.iter().find(|a| !a.starts_with("--")).cloned();
    let backend = match std::env::var("MIEN_BENCH_BACKEND").as_deref() {
        Ok("gl") => BackendChoice::Gl,
        Ok("vulkan") => BackendChoice::Vulkan,
        _ => BackendChoice::Auto,
    };
    let gpu = Gpu::new(&GpuOptions { backend, ..Default::default() }).expect("the kernel benchmark needs a GPU adapter");
    println!("{}", bench::adapter_line(&gpu));
    println!("CPU backend: {} rayon threads; median of {reps} runs after a warm-up", rayon::current_num_threads());
    let calibrated = |p: &bench::Peaks| println!("calibration FMA: {:.2} GFLOP/s; SGEMM 1024^3: {:.2} GFLOP/s; copy: {:.2} GB/s", p.fma_gflops, p.sgemm_gflops, p.copy_gbps);
    let bar = bench::progress_bar();
    bench::bench_kernels(&gpu, &bench::DEFAULT_BATCHES, reps, filter.as_deref(), &bar, calibrated, bench::row_printer(&bar)).expect("benchmark failed");
    bar.finish_and_clear();
}
