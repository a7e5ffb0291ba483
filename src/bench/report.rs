//! What the benchmarks report: the results each suite hands back (serialized as they are for
//! `--json`, so their field names are part of the output) and the kernel benchmark's table.

use crate::gpu::Gpu;
use indicatif::ProgressBar;
use serde::Serialize;

/// What one run of a kernel accomplishes, to turn its time into a rate.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Work {
    /// Floating-point operations (compute-bound kernels).
    Flops(f64),
    /// Bytes read plus bytes written (memory-bound kernels).
    Bytes(f64),
}

impl Work {
    fn rate(&self, seconds: f64) -> String {
        match *self {
            Work::Flops(f) => format!("{:.2} GFLOP/s", f / seconds / 1e9),
            Work::Bytes(b) => format!("{:.2} GB/s", b / seconds / 1e9),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    pub batch: usize,
    pub kernel: String,
    pub shape: String,
    pub work: Work,
    /// Median of the repetitions, and their highest minus their lowest.
    pub gpu_ms: f64,
    pub gpu_spread_ms: f64,
    /// A compute-bound kernel's GPU GFLOP/s as a percentage of the adapter's peak, the
    /// calibration FMA's GFLOP/s measured just before it (`fma_yardstick`).
    pub gpu_percent_of_fma: Option<f64>,
    /// The kernel's GPU GFLOP/s as a percentage of the calibration SGEMM's, measured just
    /// before it (`yardstick`).
    pub gpu_percent_of_sgemm: Option<f64>,
    /// A memory-bound kernel's GPU GB/s as a percentage of the calibration copy's, measured
    /// just before it.
    pub gpu_percent_of_copy: Option<f64>,
    /// The calibration this kernel's percentage divides by: SGEMM GFLOP/s or copy GB/s.
    pub yardstick: f64,
    /// The calibration FMA's GFLOP/s, for compute-bound kernels.
    pub fma_yardstick: Option<f64>,
    pub cpu_ms: f64,
    pub cpu_spread_ms: f64,
    /// CPU time / GPU time: above 1 the GPU is faster.
    pub gpu_speedup: f64,
    /// The GPU passes one run records, in order, each with its median time (timestamp queries
    /// only): where a kernel of several passes (packing, the product, a sum of splits) spends.
    pub gpu_passes: Vec<PassMedian>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PassMedian {
    pub pass: &'static str,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub adapter: String,
    /// The kernel tiles the adapter gets ([`Gpu::tiles`]).
    pub tiles: String,
    /// GFLOP/s of the calibration FMA (shaders/fma_calibration.wgsl, multiply-adds on
    /// registers alone) at the start of this run: the adapter's peak, timed again before each
    /// compute-bound kernel (its `fma_yardstick`).
    pub fma_gflops: f64,
    /// GFLOP/s of the calibration SGEMM (shaders/sgemm_calibration.wgsl) on this adapter at
    /// the start of this run; each compute-bound kernel's %sgemm uses the SGEMM timed again just
    /// before it (its `yardstick`).
    pub sgemm_gflops: f64,
    /// GB/s (read plus written) of the calibration copy (shaders/copy_calibration.wgsl) at the
    /// start; the memory-bound kernels' yardstick, timed again before each.
    pub copy_gbps: f64,
    pub gpu_timing: &'static str,
    pub cpu_threads: usize,
    pub repetitions: usize,
    pub batches: Vec<usize>,
    pub results: Vec<KernelResult>,
}

/// Face-detection speed on one frame size.
#[derive(Clone, Debug, Serialize)]
pub struct DetectResult {
    /// "haar" (the frontal-face cascade, OpenCV's default parameters) or "yunet" (YuNet-n at
    /// `mien detect`'s defaults).
    pub detector: String,
    /// "cpu" or the adapter's description.
    pub device: String,
    pub width: u32,
    pub height: u32,
    /// CPU threads (for the GPU path: the host threads, which only group rectangles).
    pub threads: usize,
    pub reps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub fps: f64,
    pub faces: usize,
    /// GPU only: passes recorded per frame and the host's milliseconds to record and submit
    /// them (median), a floor under the frame time however fast the GPU is.
    pub gpu_passes_per_frame: Option<usize>,
    pub host_ms: Option<f64>,
    /// GPU only: frames per second of a stream of `reps` such frames with one in flight
    /// (frame N + 1 queued before frame N's faces are read), which hides the host's share.
    pub stream_fps: Option<f64>,
}

/// Training and inference throughput of a model on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    pub model: String,
    pub parameters: usize,
    pub device: String,
    /// Host threads (rayon's pool): the CPU backend's compute threads.
    pub threads: usize,
    pub batch: usize,
    pub reps: usize,
    /// Full step: forward, loss, backward, Adam.
    pub train_images_per_second: f64,
    pub inference_images_per_second: f64,
    pub inference_batch1_ms: f64,
}

/// The kernel benchmark's first line: the adapter, how it is timed and the tiles it gets.
pub fn adapter_line(gpu: &Gpu) -> String {
    format!("GPU: {} ({}; {})", gpu.describe(), gpu.timing(), gpu.tiles())
}

/// The lowest and highest of the values `pick` finds among the results (a calibration's rate
/// measured before each kernel).
pub fn range(report: &KernelReport, pick: impl Fn(&KernelResult) -> Option<f64>) -> Option<Span> {
    let values: Vec<f64> = report.results.iter().filter_map(pick).collect();
    let lo = values.iter().copied().reduce(f64::min)?;
    Some(Span { lo, hi: values.iter().copied().fold(lo, f64::max) })
}

/// The lowest and highest of some figures.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub lo: f64,
    pub hi: f64,
}

fn table_header() -> String {
    format!(
        "{:<34} {:<28} {:>10} {:>8} {:>16} {:>6} {:>7} {:>10} {:>8} {:>16} {:>8}\n{}",
        "kernel",
        "shape",
        "GPU ms",
        "spread",
        "GPU rate",
        "%peak",
        "%sgemm",
        "CPU ms",
        "spread",
        "CPU rate",
        "GPU/CPU",
        "-".repeat(161)
    )
}

/// Prints each kernel's row, with a heading and the table's header before a batch's first, above
/// `bar`.
pub fn row_printer(bar: &ProgressBar) -> impl FnMut(&KernelResult) {
    let bar = bar.clone();
    let mut last_batch = None;
    move |r| {
        bar.suspend(|| {
            if last_batch != Some(r.batch) {
                println!("\nbatch {}\n{}", r.batch, table_header());
                last_batch = Some(r.batch);
            }
            println!("{}", table_row(r));
        })
    }
}

/// A kernel's row, and under it its GPU passes when there are several.
fn table_row(r: &KernelResult) -> String {
    let mut row = format!(
        "{:<34} {:<28} {:>10.3} {:>8} {:>16} {:>6} {:>7} {:>10.3} {:>8} {:>16} {:>7.3}x",
        r.kernel,
        r.shape,
        r.gpu_ms,
        format!("±{:.3}", r.gpu_spread_ms),
        r.work.rate(r.gpu_ms / 1e3),
        r.gpu_percent_of_fma.or(r.gpu_percent_of_copy).map_or(String::new(), |p| format!("{p:.0}%")),
        r.gpu_percent_of_sgemm.map_or(String::new(), |p| format!("{p:.0}%")),
        r.cpu_ms,
        format!("±{:.3}", r.cpu_spread_ms),
        r.work.rate(r.cpu_ms / 1e3),
        r.gpu_speedup
    );
    if r.gpu_passes.len() > 1 {
        let passes: Vec<String> = r.gpu_passes.iter().map(|p| format!("{} {:.3}", p.pass, p.ms)).collect();
        row.push_str(&format!("\n    passes (ms): {}", passes.join(", ")));
    }
    row
}
