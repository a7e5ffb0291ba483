//! The `mien` command line: the flags, and one module per group of commands (`training`: train and
//! eval; `detect`; `benchmarks`: bench and profile; `video`), each calling the library.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mien::augment::Tta;
use mien::gpu::{self, BackendChoice, DeviceChoice, GpuOptions};
use mien::kernels::conv2d::Precision;
use mien::nn::{Cpu, GpuBackend, ModelConfig};
use mien::pipeline::video::VIDEO_MODELS;
use mien::pipeline::SHIPPED_WEIGHTS;
use mien::train::{self, RunState};
use std::path::{Path, PathBuf};

mod benchmarks;
mod detect;
mod training;
mod video;

use benchmarks::{bench_detect, bench_kernels, bench_train, profile_detect, profile_infer, profile_train, profile_yunet, BenchSuite, ProfileWhat};
use detect::{run_detect, DetectArgs, DetectorKind};
use training::{recipe_of, run_eval, run_train, EvalArgs, TrainArgs};

#[derive(Parser)]
#[command(name = "mien", version, about = "Facial-expression recognition on hand-written WGSL kernels")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// wgpu backend to look for adapters on.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Adapter to use: its index in `mien devices` or part of its name. Named, it is used even
    /// with `--device auto` and even when it is a software one; one that is not there is an error.
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Where to compute: auto picks a real GPU, or the CPU backend when the only adapter is a
    /// software one such as lavapipe; gpu forces wgpu on any adapter.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Treat storage bindings as at most this many bytes, below the adapter's own limit: to see
    /// how mien handles inputs too large for a smaller GPU.
    #[arg(long, global = true, value_name = "BYTES")]
    max_binding: Option<u64>,
    /// What the CPU backend's convolutions (the expression model's and YuNet's) multiply in
    /// inference: bf16 (outputs move by a few tenths of a percent) on AMX tiles (Intel Xeon since
    /// Sapphire Rapids) or with AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake and later), or f32.
    /// Default: bf16 where the CPU has either, f32 elsewhere. Training always multiplies f32.
    #[arg(long, global = true, value_enum)]
    precision: Option<Precision>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

impl Global {
    /// The precision asked for, or else bf16 where the CPU makes bf16 products (AMX tiles or
    /// AVX-512 BF16): it measures the same accuracy as f32 there, faster (data/models/README.md),
    /// as OpenVINO's CPU runtime also lowers inference to bf16 on such CPUs unless told otherwise.
    fn precision(&self) -> Precision {
        let bf16 = mien::kernels::conv2d::bf16_available();
        self.precision.unwrap_or(if bf16 { Precision::Bf16 } else { Precision::F32 })
    }

    fn gpu_options(&self) -> GpuOptions {
        GpuOptions { backend: self.backend, adapter: self.adapter.clone(), binding_limit_override: self.max_binding, gpu_tiles: false }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter: name, backend, driver, type, features and key limits.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Write every WGSL shader as the GPU compiles it (its files joined, its variant's lines
    /// in) to a folder, one `<name>.wgsl` each: to read them, or to hand them to another
    /// compiler (tools/web-shader-check.mjs compiles them in Chromium).
    Shaders {
        #[arg(long, default_value = "out/shaders")]
        out: PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
    /// Train an expression model on FER2013.
    Train(TrainArgs),
    /// Accuracy, loss, per-class scores and the confusion matrix of a model on a dataset.
    Eval(EvalArgs),
    /// Find faces in images and label their expressions.
    Detect(DetectArgs),
    /// Time every GPU pass of training, inference or detection: a Chrome/Perfetto trace and a
    /// summary.
    Profile {
        #[command(subcommand)]
        what: ProfileWhat,
    },
}

/// Runs `$body` with `$backend` bound to the backend `--device` picks: the GPU backend on the
/// chosen adapter (with `$gpu` bound to it), or the CPU backend (with `$gpu` None). The
/// commands are generic over the backend; this picks the instance in one place.
macro_rules! on_backend {
    ($global:expr, |$backend:ident, $gpu:ident| $body:expr) => {
        match gpu::select($global.device, &$global.gpu_options())? {
            Some(device) => {
                let $gpu = Some(&device);
                let $backend = GpuBackend::new(&device);
                $body
            }
            None => {
                let $gpu: Option<&gpu::Gpu> = None;
                let $backend = Cpu;
                $body
            }
        }
    };
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!("mien={level},wgpu=error,naga=error"))).init();
    if cli.global.precision == Some(Precision::Bf16) && !mien::kernels::conv2d::bf16_available() {
        eprintln!("warning: --precision bf16 needs AMX tiles (Intel Xeon since Sapphire Rapids) or AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake and later), which this CPU or OS does not give: the CPU multiplies f32");
    }
    match cli.command {
        Command::Devices { json } => devices(&cli.global, json),
        Command::Shaders { out } => write_shaders(&out),
        Command::Bench { suite: BenchSuite::Kernels { batch, reps, filter, json } } => bench_kernels(&cli.global, &batch, reps, filter.as_deref(), json),
        Command::Bench { suite: BenchSuite::Detect { reps, cascade, json } } => bench_detect(&cli.global, &cascade, reps, json),
        Command::Bench { suite: BenchSuite::Video { frames, clips, weights, tta, json } } => video::bench(&cli.global, frames, &clips, &video_weights(&weights), tta, json),
        Command::Bench { suite: BenchSuite::Train { batch, reps, model, json } } => on_backend!(cli.global, |backend, _gpu| bench_train(&backend, batch, reps, &model, cli.global.precision(), json)),
        Command::Train(args) => {
            // Bad settings are refused before a device is opened or data read.
            let recipe = recipe_of(&args)?;
            on_backend!(cli.global, |backend, _gpu| run_train(&backend, &args, &recipe))
        }
        Command::Eval(args) => on_backend!(cli.global, |backend, _gpu| run_eval(&backend, &args, cli.global.precision())),
        Command::Profile { what: ProfileWhat::Train { steps, batch, trace, model } } => profile_train(&cli.global, steps, batch, &trace, model.as_deref()),
        Command::Profile { what: ProfileWhat::Infer { calls, batch, trace, model } } => profile_infer(&cli.global, calls, batch, &trace, model.as_deref()),
        Command::Profile { what: ProfileWhat::Detect { detector: DetectorKind::Haar, frames, size, trace, cascade } } => profile_detect(&cli.global, frames, size, &trace, &cascade),
        Command::Profile { what: ProfileWhat::Detect { detector: DetectorKind::Yunet, frames, size, trace, .. } } => profile_yunet(&cli.global, frames, size, &trace),
        Command::Detect(args) => {
            let out = output_folder(&args.out)?;
            on_backend!(cli.global, |backend, gpu| run_detect(backend, gpu, &args, &out, cli.global.precision()))
        }
    }
}

fn devices(global: &Global, json: bool) -> Result<()> {
    let adapters = if global.backend == BackendChoice::Auto { gpu::enumerate_all() } else { gpu::enumerate(global.backend) };
    let reports: Vec<_> = adapters.iter().enumerate().map(|(i, a)| gpu::report(i, a)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no adapters found on backend {:?} (without a GPU on Linux: apt-get install mesa-vulkan-drivers)", global.backend);
    }
    let picked = match gpu::select(global.device, &global.gpu_options()) {
        Ok(Some(g)) => format!("GPU {}", g.describe()),
        Ok(None) => "the CPU backend".into(),
        Err(e) => format!("nothing: {e}"),
    };
    println!("--device {:?} runs on {picked}", global.device);
    for r in &reports {
        println!("[{}] {} ({}, {}{})", r.index, r.name, r.backend, r.device_type, if r.software { ", software" } else { "" });
        println!("    driver: {} {}", r.driver, r.driver_info);
        println!("    f16: {}  subgroups: {} (size {}-{})  timestamps: {}", yes(r.shader_f16), yes(r.subgroups), r.subgroup_size[0], r.subgroup_size[1], yes(r.timestamps));
        println!(
            "    max storage binding: {} MiB  max buffer: {} MiB  workgroups/dim: {}  invocations/workgroup: {}  workgroup memory: {} KiB  storage buffers/stage: {}",
            r.max_storage_buffer_binding_size >> 20,
            r.max_buffer_size >> 20,
            r.max_compute_workgroups_per_dimension,
            r.max_compute_invocations_per_workgroup,
            r.max_compute_workgroup_storage_size >> 10,
            r.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Takes the bar off the terminal.
    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl train::Observer for Progress {
    fn batch(&mut self, done: usize, total: usize, loss: f64, accuracy: f64, images_per_second: f64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})").expect("valid template").progress_chars("=> "));
            bar
        });
        bar.set_position(done as u64);
        bar.set_message(format!("loss {loss:.4} acc {:.2}% {images_per_second:.0} img/s", 100.0 * accuracy));
    }
    fn epoch(&mut self, state: &RunState) {
        self.clear();
        let m = state.history.last().expect("an epoch just ended");
        println!(
            "epoch {:>3}  lr {:.2e}  loss {:.4}  acc {:.2}%  val loss {:.4}  val acc {:.2}%{}  {:.0} img/s  {:.0} s{}",
            m.epoch,
            m.lr,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.val_loss,
            100.0 * m.val_accuracy,
            m.val_accuracy_single.map_or(String::new(), |a| format!(" (alone {:.2}%)", 100.0 * a)),
            m.images_per_second,
            m.seconds,
            if state.best_epoch == m.epoch { "  (best)" } else { "" }
        );
    }
}

/// Whether `path` names standard output (`-`).
fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Writes `value` as pretty JSON to `path`, or to standard output for `-`; a failed write
/// (a full disk, a closed pipe) is an error, not a panic.
fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        return writeln!(out, "{text}").and_then(|()| out.flush()).context("cannot write the JSON to standard output");
    }
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// The name `--tta` takes for `tta`.
fn tta_name(tta: Tta) -> String {
    tta.to_possible_value().expect("no skipped values").get_name().to_owned()
}

/// A file as given, or for a bare name (no extension, no folder, no such file) the file of that
/// name shipped in data/models with `extension`.
fn shipped_model_file(file_or_name: &Path, extension: &str) -> PathBuf {
    let is_name = file_or_name.extension().is_none() && file_or_name.components().count() == 1 && !file_or_name.exists();
    if is_name {
        shipped(&Path::new("data/models").join(file_or_name).with_extension(extension))
    } else {
        shipped(file_or_name)
    }
}

/// A model config from a file, or by the name of one shipped in data/models.
fn model_config(file_or_name: &Path) -> Result<ModelConfig> {
    Ok(ModelConfig::load(&shipped_model_file(file_or_name, "json"))?)
}

/// The expression model weights given (files, or names of weights shipped in data/models), or
/// the default ones.
fn expression_weights(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        SHIPPED_WEIGHTS.iter().map(|path| shipped(Path::new(path))).collect()
    } else {
        given.iter().map(|path| shipped_model_file(path, "safetensors")).collect()
    }
}

/// The expression model weights that label videos: those given, or the first of the default
/// ones as `mien detect` takes them for videos.
fn video_weights(given: &[PathBuf]) -> Vec<PathBuf> {
    let mut weights = expression_weights(given);
    if given.is_empty() {
        weights.truncate(VIDEO_MODELS);
    }
    weights
}

/// A path as given, or else relative to the source tree (so the shipped data is found when
/// mien runs from elsewhere).
fn shipped(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if fallback.exists() {
        fallback
    } else {
        path.to_path_buf()
    }
}

/// `--out`, created if missing; refused when it names something that is not a folder.
fn output_folder(out: &Path) -> Result<PathBuf> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("--out {}: cannot create the folder", out.display()))?;
    Ok(out.to_path_buf())
}

/// Each shader's source as `<name>.wgsl`, and `shaders.json`: each one's file and the values
/// of its `override` constants, which a compiler needs to build its pipelines.
fn write_shaders(out: &Path) -> Result<()> {
    let out = output_folder(out)?;
    let mut index = Vec::new();
    for shader in gpu::shaders::ALL {
        let file = format!("{}.wgsl", shader.name);
        let path = out.join(&file);
        std::fs::write(&path, shader.source()).with_context(|| format!("{}: cannot write", path.display()))?;
        let constants: serde_json::Map<String, serde_json::Value> = shader.constants.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        index.push(serde_json::json!({ "name": shader.name, "file": file, "constants": constants }));
    }
    write_json(&out.join("shaders.json"), &index)?;
    println!("{} shaders in {}", gpu::shaders::ALL.len(), out.display());
    Ok(())
}
