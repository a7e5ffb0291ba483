//! Benchmarks behind `mien bench` and `cargo bench`: every kernel against the CPU backend
//! ([`bench_kernels`], scaled by the calibrations of `calibration`), face detection (Haar:
//! [`bench_detect_gpu`], [`bench_detect_cpu`]; YuNet: [`bench_yunet_gpu`], [`bench_yunet_cpu`]),
//! training ([`bench_train`]) and video end to end ([`bench_video`]), with the results and the
//! rows they print in `report`. Here: what several suites share, the progress bar, medians and
//! GPU timing.

mod calibration;
mod detect;
mod kernels;
mod report;
mod train;
mod video;

pub use calibration::Peaks;
pub use detect::{bench_detect_cpu, bench_detect_gpu, bench_yunet_cpu, bench_yunet_gpu, detect_frame, detect_frame_rgb, FrameSize, DETECT_CPU_STAGES, DETECT_GPU_STAGES, DETECT_SIZES, YUNET_STAGES};
pub use kernels::{bench_kernels, DEFAULT_BATCHES};
pub use report::{adapter_line, range, row_printer, DetectResult, KernelReport, KernelResult, PassMedian, Span, TrainBench, Work};
pub use train::{bench_train, BATCH1_REPS_PER_REP, TRAIN_STAGES};
pub use video::{bench_video, make_clip, VideoBenchResult, CLIP_FPS, VIDEO_SIZES};

use crate::error::Result;
use crate::gpu::{Gpu, Recorder};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

type GpuRun = Box<dyn Fn(&mut Recorder) -> Result<()>>;

/// A bar on stderr for a long benchmark, with the stage it is at as its message (hidden when
/// stderr is not a terminal). Its length is the number of stages; a suite sets it.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} ({elapsed}, about {eta} left)").expect("valid template").progress_chars("=> "));
    bar
}

/// The middle of a set of samples and how far apart its extremes lie, in the samples' unit.
#[derive(Clone, Copy, Debug)]
struct Summary {
    median: f64,
    spread: f64,
}

fn summarize(mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    Summary { median: samples[samples.len() / 2], spread: samples[samples.len() - 1] - samples[0] }
}

/// A GPU run's time in milliseconds and, with timestamp queries, each of its passes' median.
struct GpuTiming {
    ms: Summary,
    passes: Vec<PassMedian>,
}

fn time_gpu(gpu: &Gpu, run: &dyn Fn(&mut Recorder) -> Result<()>, reps: usize) -> Result<GpuTiming> {
    struct PassSamples {
        pass: &'static str,
        ms: Vec<f64>,
    }
    let mut samples = Vec::with_capacity(reps);
    let mut pass_samples: Vec<PassSamples> = Vec::new();
    for rep in 0..=reps {
        let mut rec = gpu.recorder(true);
        let start = Instant::now();
        run(&mut rec)?;
        let passes = rec.finish()?.passes;
        let wall = start.elapsed().as_secs_f64() * 1e3;
        let ms = if gpu.timestamps { passes.iter().map(|p| p.nanos).sum::<f64>() / 1e6 } else { wall };
        if rep == 0 {
            continue; // warm-up: pipeline compilation, first touches
        }
        samples.push(ms);
        if gpu.timestamps {
            pass_samples.resize_with(passes.len(), || PassSamples { pass: "", ms: Vec::new() });
            for (slot, p) in pass_samples.iter_mut().zip(&passes) {
                slot.pass = p.label;
                slot.ms.push(p.nanos / 1e6);
            }
        }
    }
    let passes = pass_samples.into_iter().map(|s| PassMedian { pass: s.pass, ms: summarize(s.ms).median }).collect();
    Ok(GpuTiming { ms: summarize(samples), passes })
}

fn seeded(n: usize, seed: u32) -> Vec<f32> {
    // Cheap deterministic values in [-1, 1): the benchmark only needs realistic magnitudes.
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 8) as f32 / (1 << 23) as f32 - 1.0).collect()
}
