//! `mien bench` and `mien profile`: their flags and reports.

use super::detect::DetectorKind;
use super::{model_config, shipped, Global};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mien::augment::Tta;
use mien::bench;
use mien::data;
use mien::detect::yunet::YuNetParams;
use mien::gpu::{self, DeviceChoice};
use mien::kernels::conv2d::Precision;
use mien::nn::{Backend, GpuBackend, Model, ModelConfig};
use mien::pipeline::video::VIDEO_TTA;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(super) enum ProfileWhat {
    /// Training steps of the original model, or `--model`'s (synthetic images).
    Train {
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Trace file (JSON trace-event format; open it in ui.perfetto.dev or chrome://tracing).
        #[arg(long, default_value = "trace.json")]
        trace: PathBuf,
        /// Model config; default: the original model.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Inference calls of the original model, or `--model`'s (synthetic images): batch-1
    /// latency by default, the launch-bound case a fast GPU spends most of its time between
    /// passes in.
    Infer {
        #[arg(long, default_value_t = 20)]
        calls: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Trace file (JSON trace-event format; open it in ui.perfetto.dev or chrome://tracing).
        #[arg(long, default_value = "trace.json")]
        trace: PathBuf,
        /// Model config; default: the original model.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Face detection on the GPU: frames of the benchmark scene (the montage of
    /// `mien bench detect`), YuNet with `mien detect`'s defaults or the Haar cascade with
    /// OpenCV's.
    Detect {
        #[arg(long, value_enum, default_value_t = DetectorKind::Yunet)]
        detector: DetectorKind,
        #[arg(long, default_value_t = 5)]
        frames: usize,
        /// Frame size, WIDTHxHEIGHT.
        #[arg(long, default_value = "1280x720", value_parser = parse_size)]
        size: (u32, u32),
        /// Trace file (JSON trace-event format; open it in ui.perfetto.dev or chrome://tracing).
        #[arg(long, default_value = "trace.json")]
        trace: PathBuf,
        #[arg(long, default_value = "data/cascades/haarcascade_frontalface_default.xml")]
        cascade: PathBuf,
    },
}

#[derive(Subcommand)]
pub(super) enum BenchSuite {
    /// Images per second of a training step and of inference (batch 64, and batch-1 latency)
    /// for the original and the default (VGG) model, on the chosen device.
    Train {
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Model configs (files or shipped names) to time instead of the original and the vgg model (repeat the flag for several).
        #[arg(long)]
        model: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Face detection frames per second at 640x480, 1280x720 and 1920x1080 (CPU reference,
    /// one thread and all threads); tools/opencv_bench.py times OpenCV on the same frames.
    Detect {
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value = "data/cascades/haarcascade_frontalface_default.xml")]
        cascade: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// `mien detect` on videos end to end (YuNet, the default model and averaging, tracking,
    /// drawing, H.264): frames per second and each stage's milliseconds a frame at 640x480,
    /// 1280x720 and 1920x1080, GPU and CPU, on clips panned across the benchmark montage.
    Video {
        /// Frames a clip.
        #[arg(long, default_value_t = 150)]
        frames: u32,
        /// Folder for the clips (made with ffmpeg unless there already) and the outputs.
        #[arg(long, default_value = "out/bench-video")]
        clips: PathBuf,
        /// Expression model weights, as `mien detect --weights` takes them (default: the first
        /// shipped model, which labels videos).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<PathBuf>,
        /// Test-time augmentation of each face, as `mien detect --tta` takes it for videos.
        #[arg(long, value_enum, default_value_t = VIDEO_TTA)]
        tta: Tta,
        #[arg(long)]
        json: bool,
    },
    /// Every kernel at the original model's shapes, GPU vs the CPU backend.
    Kernels {
        /// Batches to time every kernel at, in turn.
        #[arg(long, value_delimiter = ',', default_values_t = bench::DEFAULT_BATCHES)]
        batch: Vec<usize>,
        /// Timed repetitions per kernel, after one warm-up run.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only kernels whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// "WIDTHxHEIGHT", both positive.
fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let parsed = s.split_once('x').and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("expected WIDTHxHEIGHT such as 1280x720, got {s:?}")),
    }
}

pub(super) fn bench_kernels(global: &Global, batches: &[usize], reps: usize, filter: Option<&str>, json: bool) -> Result<()> {
    if batches.contains(&0) {
        bail!("--batch: batches must be at least 1");
    }
    // The kernel benchmark compares the two backends, so it always opens the GPU.
    let gpu = gpu::Gpu::new(&global.gpu_options()).context("the kernel benchmark needs a GPU adapter")?;
    if !json {
        eprintln!("{}", bench::adapter_line(&gpu));
        eprintln!("CPU backend: {} rayon threads", rayon::current_num_threads());
    }
    let bar = bench::progress_bar();
    let mut print_row = bench::row_printer(&bar);
    let report = bench::bench_kernels(
        &gpu,
        batches,
        reps.max(1),
        filter,
        &bar,
        |peaks| {
            if !json {
                println!("calibration FMA (multiply-adds on registers, the peak): {:.2} GFLOP/s", peaks.fma_gflops);
                println!("calibration SGEMM 1024^3 (8x8 outputs per thread, vec4 loads): {:.2} GFLOP/s", peaks.sgemm_gflops);
                println!("calibration copy 64 MiB (vec4 per thread): {:.2} GB/s read + written", peaks.copy_gbps);
                println!("%peak: GFLOP/s as a share of the FMA's, or GB/s as a share of the copy's; %sgemm: GFLOP/s as a share of the SGEMM's; each calibration timed again just before the kernel");
                println!("ms: median of {reps} runs after a warm-up; spread: their highest minus their lowest", reps = reps.max(1));
            }
        },
        |r| {
            if !json {
                print_row(r);
            }
        },
    )?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let (Some(fma), Some(sgemm)) = (bench::range(&report, |r| r.fma_yardstick), bench::range(&report, |r| matches!(r.work, bench::Work::Flops(_)).then_some(r.yardstick))) {
        println!("before each compute-bound kernel, calibration FMA {:.2}-{:.2} GFLOP/s, SGEMM {:.2}-{:.2} GFLOP/s", fma.lo, fma.hi, sgemm.lo, sgemm.hi);
    }
    Ok(())
}

/// The scene the detection benchmarks and profiles frame: a montage of faces.
fn benchmark_scene() -> Result<image::GrayImage> {
    let path = shipped(Path::new("data/fixtures/haar/montage.png"));
    Ok(image::open(&path).with_context(|| format!("{}: cannot read the benchmark scene", path.display()))?.to_luma8())
}

/// The GPU a benchmark runs beside the CPU: any adapter (lavapipe included) unless --device
/// cpu; a missing adapter is an error only when --device gpu asked for one.
pub(super) fn gpu_for_bench(global: &Global) -> Result<Option<gpu::Gpu>> {
    Ok(match global.device {
        DeviceChoice::Cpu => None,
        DeviceChoice::Gpu => Some(gpu::Gpu::new(&global.gpu_options())?),
        DeviceChoice::Auto => gpu::Gpu::new(&global.gpu_options()).map_err(|e| eprintln!("no GPU column: {e}")).ok(),
    })
}

pub(super) fn bench_detect(global: &Global, cascade: &Path, reps: usize, json: bool) -> Result<()> {
    let cascade = mien::detect::Cascade::load(&shipped(cascade))?;
    let scene = benchmark_scene()?;
    let gpu = gpu_for_bench(global)?;
    let all_threads = rayon::current_num_threads();
    let mut results = Vec::new();
    let bar = bench::progress_bar();
    let gpu_stages = if gpu.is_some() { bench::DETECT_GPU_STAGES + bench::YUNET_STAGES } else { 0 };
    bar.set_length((2 * bench::DETECT_CPU_STAGES + 2 * bench::YUNET_STAGES + gpu_stages) as u64);
    if let Some(gpu) = &gpu {
        if !json {
            eprintln!("GPU: {}", gpu.describe());
        }
        results.extend(bench::bench_detect_gpu(gpu, &cascade, &scene, reps, &bar)?);
    }
    results.extend(bench::bench_detect_cpu(&cascade, &scene, 1, reps, &bar)?);
    results.extend(bench::bench_detect_cpu(&cascade, &scene, all_threads, reps, &bar)?);
    if let Some(gpu) = &gpu {
        results.extend(bench::bench_yunet_gpu(gpu, &scene, reps, &bar)?);
    }
    results.extend(bench::bench_yunet_cpu(&scene, 1, reps, &bar)?);
    results.extend(bench::bench_yunet_cpu(&scene, all_threads, reps, &bar)?);
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let yunet = YuNetParams::DETECT;
    let headings = [
        ("haar", format!("Face detection, OpenCV defaults (scale 1.1, 3 neighbours), frontal-face cascade, median of {reps}")),
        ("yunet", format!("YuNet-n (score {}, NMS {}, top {}) on the same frames as RGB (the grey repeated), median of {reps}", yunet.score_threshold, yunet.nms_threshold, yunet.top_k)),
    ];
    for (detector, heading) in headings {
        println!("{heading}");
        for r in results.iter().filter(|r| r.detector == detector) {
            let on = if r.device == "cpu" { format!("CPU {} thread(s)", r.threads) } else { format!("GPU {}", r.device) };
            let host = match (r.gpu_passes_per_frame, r.host_ms, r.stream_fps) {
                (Some(passes), Some(ms), Some(stream)) => format!("; host {ms:.2} ms recording and submitting {passes} passes; as a stream with one frame in flight {stream:.2} fps"),
                _ => String::new(),
            };
            println!("{}x{} {on}: {:.1} ms, {:.2} fps, {} faces{host}", r.width, r.height, r.median_ms, r.fps, r.faces);
        }
    }
    Ok(())
}

pub(super) fn bench_train<B: Backend>(backend: &B, batch: usize, reps: usize, models: &[PathBuf], precision: Precision, json: bool) -> Result<()> {
    let configs = if models.is_empty() { vec![ModelConfig::original(), model_config(Path::new("vgg"))?] } else { models.iter().map(|m| model_config(m)).collect::<Result<Vec<_>>>()? };
    let mut results = Vec::new();
    let bar = bench::progress_bar();
    bar.set_length((configs.len() * bench::TRAIN_STAGES) as u64);
    for config in configs {
        let r = bench::bench_train(backend, config, batch, reps, precision, &bar)?;
        if !json {
            bar.suspend(|| {
                println!(
                    "{} on {}: training {:.1} images/s, inference {:.1} images/s (batch {}), batch-1 latency {:.2} ms",
                    r.model, r.device, r.train_images_per_second, r.inference_images_per_second, r.batch, r.inference_batch1_ms
                )
            });
        }
        results.push(r);
    }
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

/// A GPU with timestamp queries, for the profilers.
fn profiling_gpu(global: &Global) -> Result<gpu::Gpu> {
    let gpu = gpu::Gpu::new(&global.gpu_options()).context("profiling times GPU passes, so it needs a GPU adapter")?;
    if !gpu.timestamps {
        bail!("{} has no timestamp queries: passes cannot be timed one by one", gpu.describe());
    }
    Ok(gpu)
}

/// What `mien profile` measured over `units` repetitions of a unit of work (a training step, a
/// frame): every pass with its GPU time, the wall time and the host's cost.
struct Profile<'a> {
    unit: &'a str,
    units: usize,
    passes: Vec<gpu::PassTiming>,
    wall_s: f64,
    host: gpu::HostTiming,
}

/// Writes the trace (JSON trace-event format, `other` added to its otherData) and prints the
/// per-kernel summary after `title`.
fn report_profile(gpu: &gpu::Gpu, title: &str, p: &Profile, trace: &Path, other: serde_json::Value) -> Result<()> {
    let events: Vec<serde_json::Value> =
        p.passes.iter().map(|t| serde_json::json!({"name": t.label, "cat": "gpu", "ph": "X", "ts": t.start_ns / 1e3, "dur": t.nanos / 1e3, "pid": 1, "tid": 1})).collect();
    let per_unit = |ns: f64| ns / 1e6 / p.units.max(1) as f64;
    let mut other_data = serde_json::json!({
        "adapter": gpu.describe(),
        format!("{}s", p.unit): p.units,
        format!("host_record_ms_per_{}", p.unit): per_unit(p.host.record_ns),
        format!("host_submit_ms_per_{}", p.unit): per_unit(p.host.submit_ns),
    });
    if let (Some(all), serde_json::Value::Object(more)) = (other_data.as_object_mut(), other) {
        all.extend(more);
    }
    let doc = serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": other_data});
    std::fs::write(trace, serde_json::to_string(&doc)?).with_context(|| format!("{}: cannot write", trace.display()))?;
    let mut by_kernel: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
    for t in &p.passes {
        let e = by_kernel.entry(t.label).or_default();
        e.0 += 1;
        e.1 += t.nanos;
    }
    let total: f64 = by_kernel.values().map(|v| v.1).sum();
    let mut rows: Vec<_> = by_kernel.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!("{title} on {}: {:.1} ms GPU time per {unit}, {:.1} ms wall per {unit}", gpu.describe(), per_unit(total), p.wall_s * 1e3 / p.units.max(1) as f64, unit = p.unit);
    // What a GPU faster than the host waits on: with the trace's timestamps this reads as
    // launch overhead against kernel time.
    println!("host per {}: {:.2} ms recording {} passes, {:.2} ms encoding and submitting them", p.unit, per_unit(p.host.record_ns), p.host.passes / p.units.max(1), per_unit(p.host.submit_ns));
    println!("{:<28} {:>7} {:>6} {:>12} {:>12}", "kernel", "share", "calls", "total ms", "mean us");
    for (name, (calls, nanos)) in rows {
        println!("{:<28} {:>6.1}% {:>6} {:>12.2} {:>12.1}", name, 100.0 * nanos / total, calls, nanos / 1e6, nanos / 1e3 / calls as f64);
    }
    println!("trace: {} ({} passes)", trace.display(), p.passes.len());
    Ok(())
}

/// The model a profile runs (the original one by default) on a profiling GPU backend, and a
/// batch of synthetic images with labels.
fn profiled_model<'g>(backend: &GpuBackend<'g>, batch: usize, model: Option<&Path>) -> Result<(Model<GpuBackend<'g>>, Vec<u8>, Vec<u32>)> {
    let config = match model {
        Some(path) => model_config(path)?,
        None => ModelConfig::original(),
    };
    let images: Vec<u8> = (0..batch * data::PIXELS).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    Ok((Model::new(backend, config, 1)?, images, labels))
}

pub(super) fn profile_train(global: &Global, steps: usize, batch: usize, trace: &Path, model: Option<&Path>) -> Result<()> {
    use mien::kernels::adam::AdamConfig;
    let gpu = profiling_gpu(global)?;
    let backend = GpuBackend::profiling(&gpu);
    let (mut net, images, labels) = profiled_model(&backend, batch, model)?;
    let augments = vec![mien::kernels::warp::centre(net.input_side()); batch];
    // One step first, so pipeline compilation and first allocations stay out of the profile.
    net.train_step(&backend, &images, &augments, &labels, 0, AdamConfig::default(), 1)?;
    backend.take_timings()?;
    backend.take_host_timing();
    let start = std::time::Instant::now();
    for step in 0..steps as u64 {
        net.train_step(&backend, &images, &augments, &labels, step as u32 + 1, AdamConfig::default(), step + 2)?;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let profile = Profile { unit: "step", units: steps, passes: backend.take_timings()?, wall_s, host: backend.take_host_timing() };
    report_profile(&gpu, &format!("{steps} training steps at batch {batch}"), &profile, trace, serde_json::json!({"batch": batch}))
}

pub(super) fn profile_infer(global: &Global, calls: usize, batch: usize, trace: &Path, model: Option<&Path>) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let gpu = profiling_gpu(global)?;
    let backend = GpuBackend::profiling(&gpu);
    let (mut net, images, _) = profiled_model(&backend, batch, model)?;
    // One call first, so pipeline compilation, first allocations and the weights' packing stay
    // out of the profile, as in a stream of calls.
    net.predict(&backend, &images, Tta::None)?;
    backend.take_timings()?;
    backend.take_host_timing();
    let start = std::time::Instant::now();
    for _ in 0..calls {
        net.predict(&backend, &images, Tta::None)?;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let profile = Profile { unit: "call", units: calls, passes: backend.take_timings()?, wall_s, host: backend.take_host_timing() };
    report_profile(&gpu, &format!("{calls} inference calls at batch {batch}"), &profile, trace, serde_json::json!({"batch": batch}))
}

/// Frames of YuNet on the GPU, as `mien detect` runs it: every pass of a frame (one command
/// buffer) timed, and the host's cost of recording and submitting them.
pub(super) fn profile_yunet(global: &Global, frames: usize, (w, h): (u32, u32), trace: &Path) -> Result<()> {
    use mien::detect::yunet::YuNet;
    let gpu = profiling_gpu(global)?;
    let frame = bench::detect_frame_rgb(&benchmark_scene()?, w, h);
    let mut net = YuNet::shipped(GpuBackend::profiling(&gpu))?;
    let params = YuNetParams::DETECT;
    // One frame first, so pipeline compilation and first allocations stay out of the profile.
    let faces = net.detect(&frame, &params)?.len();
    net.backend().take_timings()?;
    net.backend().take_host_timing();
    let start = std::time::Instant::now();
    for _ in 0..frames {
        net.detect(&frame, &params)?;
    }
    let wall_s = start.elapsed().as_secs_f64();
    let profile = Profile { unit: "frame", units: frames, passes: net.backend().take_timings()?, wall_s, host: net.backend().take_host_timing() };
    let title = format!("{frames} frames of {w}x{h} through YuNet ({faces} faces at score 0.5)");
    report_profile(&gpu, &title, &profile, trace, serde_json::json!({"width": w, "height": h, "faces": faces, "detector": "yunet"}))
}

pub(super) fn profile_detect(global: &Global, frames: usize, (w, h): (u32, u32), trace: &Path, cascade: &Path) -> Result<()> {
    let gpu = profiling_gpu(global)?;
    let cascade = mien::detect::Cascade::load(&shipped(cascade))?;
    let frame = bench::detect_frame(&benchmark_scene()?, w, h);
    let detector = mien::detect::gpu::GpuDetector::new(&gpu, &cascade)?;
    let params = mien::detect::DetectParams::default();
    // One frame first, so pipeline compilation and first allocations stay out of the profile.
    let faces = detector.detect_multi_scale(&frame, &params)?.len();
    detector.set_profiling(true);
    let (mut passes, mut host) = (Vec::new(), gpu::HostTiming::default());
    let start = std::time::Instant::now();
    for _ in 0..frames {
        detector.detect_multi_scale(&frame, &params)?;
        gpu::append_timeline(&mut passes, detector.take_timings());
        host += detector.last_host_timing();
    }
    let wall_s = start.elapsed().as_secs_f64();
    let profile = Profile { unit: "frame", units: frames, passes, wall_s, host };
    let title = format!("{frames} frames of {w}x{h} ({faces} faces, OpenCV's default parameters)");
    report_profile(&gpu, &title, &profile, trace, serde_json::json!({"width": w, "height": h, "faces": faces}))
}
