//! `cargo bench --bench train`: training-step and inference throughput of the shipped model
//! configs at batch 64, on the CPU backend and on the default GPU adapter, in one run.
//! Options after `--`: `--quick` (1 repetition instead of 5).

use indicatif::ProgressBar;
use mien::bench;
use mien::gpu::{Gpu, GpuOptions};
use mien::kernels::conv2d::Precision;
use mien::nn::{Backend, Cpu, GpuBackend, ModelConfig};
use std::path::Path;

fn run<B: Backend>(backend: &B, reps: usize) {
    let deeper = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/vgg_bn.json");
    for config in [ModelConfig::original(), ModelConfig::load(&deeper).expect("data/models/vgg_bn.json")] {
        let r = bench::bench_train(backend, config, 64, reps, Precision::F32, &ProgressBar::hidden()).expect("benchmark failed");
        println!(
            "{} ({} parameters) on {}: training {:.1} images/s, inference {:.1} images/s (batch {}), batch-1 latency {:.2} ms",
            r.model, r.parameters, r.device, r.train_images_per_second, r.inference_images_per_second, r.batch, r.inference_batch1_ms
        );
    }
}

fn main() {
    let reps = if std::env::args().any(|a| a == "--quick") { 1 } else { 5 };
    println!("median of {reps} after a warm-up; synthetic images");
    run(&Cpu, reps);
    match Gpu::new(&GpuOptions::default()) {
        Ok(gpu) => run(&GpuBackend::new(&gpu), reps),
        Err(e) => println!("no GPU rows: {e}"),
    }
}
