//! `cargo bench --bench detect`: face detection frames per second at 640x480, 1280x720 and
//! 1920x1080, the GPU detector and the CPU reference (1 thread and all threads) in one run.
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
    println!("OpenCV defaults (scale 1.1, 3 neighbours), frontal-face cascade, median of {reps}");
    match Gpu::new(&GpuOptions::default()) {
        Ok(gpu) => show(bench::bench_detect_gpu(&gpu, &cascade, &scene, reps, &ProgressBar::hidden()).expect("GPU detection")),
        Err(e) => println!("no GPU column: {e}"),
    }
    show(bench::bench_detect_cpu(&cascade, &scene, 1, reps, &ProgressBar::hidden()).expect("CPU detection"));
    show(bench::bench_detect_cpu(&cascade, &scene, rayon::current_num_threads(), reps, &ProgressBar::hidden()).expect("CPU detection"));
}
