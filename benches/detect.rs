//! `cargo bench --bench detect`: face detection frames per second at 640x480, 1280x720 and
//! 1920x1080, the Haar cascade and YuNet, each on the GPU and the CPU (1 thread and all
//! threads), in one run.
//! Options after `--`: `--quick` (1 repetition instead of 5).

use indicatif::ProgressBar;
use mien::bench::{self, DetectResult};
use mien::detect::Cascade;
use mien::gpu::{Gpu, GpuOptions};
use std::path::Path;

fn main() {
    let reps = if std::env::args().any(|a| a == "--quick") { 1 } else { 5 };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cascade = Cascade::load(&root.join("data/cascades/haarcascade_frontalface_default.xml")).expect("the shipped cascade");
    let scene = image::open(root.join("data/fixtures/haar/montage.png")).expect("the benchmark scene").to_luma8();
    let show = |rows: Vec<DetectResult>| {
        for r in rows {
            let on = if r.device == "cpu" { format!("CPU, {} thread(s)", r.threads) } else { format!("GPU, {}", r.device) };
            let stream = r.stream_fps.map_or(String::new(), |fps| format!("; as a stream with one frame in flight {fps:.2} fps"));
            println!("{}x{} {on}: {:.1} ms, {:.2} fps, {} faces{stream}", r.width, r.height, r.median_ms, r.fps, r.faces);
        }
    };
    let (hidden, all) = (ProgressBar::hidden(), rayon::current_num_threads());
    let gpu = Gpu::new(&GpuOptions::default()).map_err(|e| println!("no GPU rows: {e}")).ok();
    println!("Haar: OpenCV defaults (scale 1.1, 3 neighbours), frontal-face cascade, median of {reps}");
    if let Some(gpu) = &gpu {
        show(bench::bench_detect_gpu(gpu, &cascade, &scene, reps, &hidden).expect("GPU detection"));
    }
    show(bench::bench_detect_cpu(&cascade, &scene, 1, reps, &hidden).expect("CPU detection"));
    show(bench::bench_detect_cpu(&cascade, &scene, all, reps, &hidden).expect("CPU detection"));
    println!("YuNet-n with mien detect's defaults on the same frames, median of {reps}");
    if let Some(gpu) = &gpu {
        show(bench::bench_yunet_gpu(gpu, &scene, reps, &hidden).expect("GPU YuNet"));
    }
    show(bench::bench_yunet_cpu(&scene, 1, reps, &hidden).expect("CPU YuNet"));
    show(bench::bench_yunet_cpu(&scene, all, reps, &hidden).expect("CPU YuNet"));
}
