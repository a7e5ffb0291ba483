//! Face-detection benchmark: frames per second of the GPU detector and of the CPU reference
//! (OpenCV's default parameters) at the frame sizes of [`DETECT_SIZES`], on the frames
//! tools/opencv_bench.py times OpenCV on.

use super::{summarize, DetectResult};
use crate::detect::gpu::GpuDetector;
use crate::detect::{detect_multi_scale, Cascade, DetectParams};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, HostTiming};
use image::GrayImage;
use indicatif::ProgressBar;
use std::time::Instant;

/// A frame's extent in pixels.
#[derive(Clone, Copy, Debug)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

/// The frame sizes of the detection benchmark.
pub const DETECT_SIZES: [FrameSize; 3] = [FrameSize { width: 640, height: 480 }, FrameSize { width: 1280, height: 720 }, FrameSize { width: 1920, height: 1080 }];

/// A deterministic test frame: `scene` scaled to fit w x h (bilinear) and centred on grey 128,
/// as tools/opencv_bench.py builds its frames.
pub fn detect_frame(scene: &GrayImage, w: u32, h: u32) -> GrayImage {
    let s = (w as f64 / scene.width() as f64).min(h as f64 / scene.height() as f64);
    let (sw, sh) = (((scene.width() as f64 * s).round() as u32).min(w), ((scene.height() as f64 * s).round() as u32).min(h));
    let scaled = crate::detect::cpu::resize_exact(scene, sw, sh);
    let mut frame = GrayImage::from_pixel(w, h, image::Luma([128]));
    image::imageops::replace(&mut frame, &scaled, ((w - sw) / 2) as i64, ((h - sh) / 2) as i64);
    frame
}

/// Stages [`bench_detect_gpu`] and [`bench_detect_cpu`] each add to a progress bar.
pub const DETECT_GPU_STAGES: usize = 2 * DETECT_SIZES.len();
pub const DETECT_CPU_STAGES: usize = DETECT_SIZES.len();

/// What one detection of a frame found, and on the GPU what recording and submitting it cost
/// the host.
struct FrameOutcome {
    faces: usize,
    host: Option<HostTiming>,
}

/// Detection (OpenCV's defaults) at each frame size, median of `reps` runs of `detect` after a
/// warm-up.
fn bench_detect(device: &str, threads: usize, scene: &GrayImage, reps: usize, bar: &ProgressBar, mut detect: impl FnMut(&GrayImage) -> Result<FrameOutcome>) -> Result<Vec<DetectResult>> {
    DETECT_SIZES
        .iter()
        .map(|&FrameSize { width, height }| {
            bar.set_message(format!("{width}x{height} on {}", if device == "cpu" { format!("the CPU, {threads} thread(s)") } else { device.to_string() }));
            let frame = detect_frame(scene, width, height);
            let faces = detect(&frame)?.faces;
            let mut samples = Vec::new();
            let mut host = Vec::new();
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                let outcome = detect(&frame)?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                host.extend(outcome.host);
            }
            let min_ms = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let median_ms = summarize(samples).median;
            let gpu_passes_per_frame = host.first().map(|t| t.passes);
            let host_ms = (!host.is_empty()).then(|| summarize(host.iter().map(|t| (t.record_ns + t.submit_ns) / 1e6).collect()).median);
            bar.inc(1);
            Ok(DetectResult { device: device.to_string(), width, height, threads, reps: reps.max(1), median_ms, min_ms, fps: 1e3 / median_ms, faces, gpu_passes_per_frame, host_ms, stream_fps: None })
        })
        .collect()
}

/// The CPU reference detector with `threads` rayon threads.
pub fn bench_detect_cpu(cascade: &Cascade, scene: &GrayImage, threads: usize, reps: usize, bar: &ProgressBar) -> Result<Vec<DetectResult>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Gpu { op: "thread pool".into(), detail: e.to_string() })?;
    let params = DetectParams::default();
    bench_detect("cpu", threads, scene, reps, bar, |frame| Ok(FrameOutcome { faces: pool.install(|| detect_multi_scale(cascade, frame, &params))?.len(), host: None }))
}

/// The GPU detector; each frame is uploaded, scanned and read back, then the same frames as a
/// stream with one in flight.
pub fn bench_detect_gpu(gpu: &Gpu, cascade: &Cascade, scene: &GrayImage, reps: usize, bar: &ProgressBar) -> Result<Vec<DetectResult>> {
    let detector = GpuDetector::new(gpu, cascade)?;
    let params = DetectParams::default();
    let mut results = bench_detect(&gpu.describe(), rayon::current_num_threads(), scene, reps, bar, |frame| {
        let faces = detector.detect_multi_scale(frame, &params)?.len();
        Ok(FrameOutcome { faces, host: Some(detector.last_host_timing()) })
    })?;
    for r in &mut results {
        bar.set_message(format!("{}x{} on {}, as a stream", r.width, r.height, r.device));
        let frame = detect_frame(scene, r.width, r.height);
        let start = Instant::now();
        detector.detect_stream(vec![&frame; r.reps], &params, |_, _| {})?;
        r.stream_fps = Some(r.reps as f64 / start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    Ok(results)
}
