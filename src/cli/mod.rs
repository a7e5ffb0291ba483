//! The `mien` command line.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mien::augment::{AugmentConfig, EraseFill, Tta};
use mien::bench;
use mien::data::{self, Dataset, Usage};
use mien::detect::yunet::YuNetParams;
use mien::gpu::{self, BackendChoice, DeviceChoice, GpuOptions};
use mien::kernels::conv2d::Precision;
use mien::nn::weights::Part;
use mien::nn::{Backend, Cpu, Ensemble, GpuBackend, Model, ModelConfig};
use mien::pipeline::video::{VideoOptions, VIDEO_TTA};
use mien::pipeline::{DetectSize, SHIPPED_WEIGHTS};
use mien::train::{self, OptimizerChoice, Recipe, RunFiles, RunState, SgdSettings};
use mien::video::Preset;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

mod video;

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
    /// Adapter to use: its index in `mien devices` or part of its name.
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
    /// Time every GPU pass of a few training steps: a Chrome/Perfetto trace and a summary.
    Profile {
        #[command(subcommand)]
        what: ProfileWhat,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RecipeChoice {
    /// SGD 0.01 with Nesterov momentum 0.9 and weight decay 5e-4, 3 warm-up epochs then a
    /// cosine to 0 over 100 epochs; random crops to the model's input, flips, rotation 10, zoom
    /// 0.1, random erasing 0.5; validation with mirror images. For data/models/vgg.json.
    Default,
    /// Adam 1e-3 on a cosine down to 0 over 40 epochs, label smoothing 0.1, light augmentation
    /// (rotation 5, zoom 0.05, shifts 0.05, flips), validation with mirror images (trained the
    /// shipped weights of the original model).
    Adam,
    /// An earlier default: Adam 1e-3 with reduce-on-plateau, no smoothing, rotation 10, zoom and
    /// shifts 0.1, flips (trained the first shipped weights).
    Plateau,
    /// The original report: Adam 1e-4, rotation 30, shear 0.3, zoom 0.3, flips, 30 epochs.
    Original,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerKind {
    /// Adam with Keras' defaults.
    Adam,
    /// SGD with Nesterov momentum and weight decay, as PyTorch's.
    Sgd,
}

#[derive(Args)]
struct TrainArgs {
    /// FER2013: a folder with train/ and test/ class folders, or fer2013.csv.
    #[arg(long, default_value_os_t = data::default_fer_dir())]
    data: PathBuf,
    /// Model: a config file (JSON), or the name of a shipped one in data/models (vgg, original,
    /// vgg_bn).
    #[arg(long, default_value = "vgg")]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = RecipeChoice::Default)]
    recipe: RecipeChoice,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// The update rule (default: the recipe's).
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD's momentum, in [0, 1) (default: the recipe's, or 0.9).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// SGD with plain momentum instead of Nesterov's.
    #[arg(long)]
    no_nesterov: bool,
    /// SGD's L2 weight decay, on every trainable tensor (default: the recipe's, or 5e-4).
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Early-stopping patience in epochs on validation accuracy (0: off).
    #[arg(long)]
    patience: Option<usize>,
    /// Learning-rate schedule (default: the recipe's).
    #[arg(long, value_enum)]
    schedule: Option<mien::train::Schedule>,
    /// Epochs of linear learning-rate warm-up before the cosine schedule (default: the
    /// recipe's).
    #[arg(long, value_name = "EPOCHS")]
    warmup: Option<usize>,
    /// Label smoothing of the training loss, in [0, 1) (default: the recipe's).
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Distil from these weights (several, separated by commas, are an ensemble): each
    /// training image's target mixes the labels with the teachers' mean probabilities of it
    /// and its mirror image, computed once before the first epoch.
    #[arg(long, value_name = "WEIGHTS", value_delimiter = ',')]
    teacher: Vec<PathBuf>,
    /// With --teacher: the weight in (0, 1] of the teachers' probabilities in the target.
    #[arg(long, value_name = "WEIGHT", requires = "teacher")]
    distill: Option<f32>,
    /// Weight classes by inverse frequency.
    #[arg(long)]
    class_weights: bool,
    /// Train on the images (their centre crops, for a smaller model input) as they are (the
    /// flags below are still checked).
    #[arg(long)]
    no_augment: bool,
    /// Random rotation range in degrees (default: the recipe's).
    #[arg(long)]
    rotation: Option<f32>,
    /// Random shear range in degrees (default: the recipe's).
    #[arg(long)]
    shear: Option<f32>,
    /// Random zoom range as a fraction: factors in [1 - z, 1 + z] (default: the recipe's).
    #[arg(long)]
    zoom: Option<f32>,
    /// Random width and height shift as a fraction of the model's input side (default: the
    /// recipe's).
    #[arg(long)]
    shift: Option<f32>,
    /// No random horizontal flips.
    #[arg(long)]
    no_flip: bool,
    /// Random erasing: the probability in [0, 1] that a rectangle of 2-33 % of each training
    /// image is filled with --erase-fill (0: off, the recipes' choice).
    #[arg(long, value_name = "P")]
    erase: Option<f32>,
    /// What random erasing fills with: one random grey per image, or black.
    #[arg(long, value_enum)]
    erase_fill: Option<EraseFill>,
    /// Validate on the images alone, not the mean of each and its mirror image.
    #[arg(long)]
    no_mirror: bool,
    /// Validate on this fraction of the training images instead of the test split.
    #[arg(long)]
    val_split: Option<f64>,
    /// Use only the first N training images (and N/4 validation images): quick checks.
    #[arg(long)]
    subset: Option<usize>,
    /// Run folder for checkpoints, metrics and plots.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run saved in --out.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start from these weights (of the same model) instead of random ones, with a fresh
    /// optimizer and schedule: to fine-tune, or to give a finished run another cycle of its
    /// schedule (a warm restart).
    #[arg(long, value_name = "WEIGHTS", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Start a new run in --out even if it holds one, removing that run's checkpoints.
    #[arg(long)]
    overwrite: bool,
    /// Skip unreadable images and bad CSV rows with a warning instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A folder of class folders (such as FER2013's test/), or fer2013.csv with --usage.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Usage::PublicTest)]
    usage: Usage,
    /// Weights: safetensors files, or names of those shipped in data/models (vgg, original);
    /// default: vgg. Several, separated by commas, are an ensemble: each image gets the mean of
    /// their probabilities.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<PathBuf>,
    /// Model config; default: the one recorded in each weights file.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Test-time augmentation: classify each image by the mean probabilities of these views of
    /// it (mirror: twice the work, and more accurate on the FER2013 test split for both shipped
    /// models: see data/models/README.md).
    #[arg(long, value_enum, default_value_t = Tta::Mirror)]
    tta: Tta,
    /// Write the results as JSON to this file, or to standard output with `-` or no value.
    #[arg(long, num_args = 0..=1, default_missing_value = "-", value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the confusion matrix and the reliability diagram as DIR/confusion.png and
    /// DIR/reliability.png.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Write every image's logits, in loading order (class folders in class order, files
    /// sorted by name), as a JSON array: for comparing with other frameworks.
    #[arg(long)]
    logits: Option<PathBuf>,
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Subcommand)]
enum ProfileWhat {
    /// Training steps of the default model (synthetic images).
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
    /// Inference calls of the default model (synthetic images): batch-1 latency by default,
    /// the launch-bound case a fast GPU spends most of its time between passes in.
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

/// "WIDTHxHEIGHT", both positive.
fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let parsed = s.split_once('x').and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("expected WIDTHxHEIGHT such as 1280x720, got {s:?}")),
    }
}

#[derive(Args)]
struct DetectArgs {
    /// Images, videos (mp4, mkv, webm, mov, avi...), live streams (rtsp://, http(s)://, tcp://,
    /// udp://...), cameras (/dev/videoN), or folders of images and videos (other files are
    /// skipped with a warning).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Folder for the outputs: `<name>.annotated.png` per image; per video
    /// `<name>.annotated.mp4`, `<name>.faces.csv`, `<name>.summary.json` and
    /// `<name>.timeline.png`. Never an input's name.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Also write every image's faces as one JSON array to this file (`-`: standard output,
    /// with the other messages on standard error).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The face detector: YuNet (a CNN; scores and landmarks too) or OpenCV's Haar cascade (the
    /// original report's method, identical to OpenCV's detectMultiScale).
    #[arg(long, value_enum, default_value_t = DetectorKind::Yunet)]
    detector: DetectorKind,
    /// YuNet: faces scoring below this are dropped.
    #[arg(long, default_value_t = YuNetParams::DETECT.score_threshold)]
    score_threshold: f32,
    /// YuNet: a face overlapping a better one by more than this (intersection over union) is
    /// dropped.
    #[arg(long, default_value_t = YuNetParams::DETECT.nms_threshold)]
    nms_threshold: f32,
    /// YuNet: at most this many of the best candidates go into non-maximum suppression.
    #[arg(long, default_value_t = YuNetParams::DETECT.top_k)]
    top_k: usize,
    /// Haar: the cascade XML.
    #[arg(long, default_value = "data/cascades/haarcascade_frontalface_default.xml")]
    cascade: PathBuf,
    /// Expression model weights: safetensors files, or names of those shipped in data/models
    /// (vgg, original); default: vgg. Several, separated by commas, are an ensemble:
    /// each face gets the mean of their probabilities.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<PathBuf>,
    /// Haar: the pyramid's scale step.
    #[arg(long, default_value_t = 1.1)]
    scale_factor: f64,
    /// Haar: how many overlapping windows make a face.
    #[arg(long, default_value_t = 3)]
    min_neighbors: usize,
    /// Smallest face to report, in pixels (both sides).
    #[arg(long, default_value_t = 0)]
    min_size: u32,
    /// Haar: largest face to report, in pixels (square).
    #[arg(long)]
    max_size: Option<u32>,
    /// Only find faces.
    #[arg(long)]
    no_emotion: bool,
    /// Test-time augmentation: label each face by the mean probabilities of these views of its
    /// crop. Default: mirror for images; none for videos, whose faces are seen in many frames.
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    /// YuNet: classify the square around each box instead of the face turned upright by its
    /// landmarks and framed as the training faces are.
    #[arg(long)]
    no_align: bool,
    /// Images: also write each face's 48x48 crop as the expression model sees it (turned
    /// upright unless --no-align) to `<name>.face<N>.png` in --out, N counting from 1 in the
    /// JSON's order; the JSON names each face's crop.
    #[arg(long)]
    crops: bool,
    /// Videos: analyse every Nth frame; the frames between carry the faces last found.
    #[arg(long, default_value_t = 1)]
    stride: u64,
    /// Videos: label each face by its probabilities averaged over this many seconds of its
    /// track (0: each frame alone).
    #[arg(long, default_value_t = 0.0)]
    smooth: f64,
    /// Videos: also write the rows as `<name>.faces.jsonl`.
    #[arg(long)]
    jsonl: bool,
    /// Videos: x264's preset for the annotated video, trading encoding time for file size
    /// (ultrafast: 3.5 times veryfast's size, superfast 1.6 times, at about the same quality).
    #[arg(long, value_enum, default_value_t = Preset::default())]
    x264_preset: Preset,
    /// YuNet: find faces in the image shrunk so that its longer side is at most this many
    /// pixels (0: full size). Default: full size for images; for videos, half the frame's
    /// longer side, kept within 320 to 640.
    #[arg(long, value_name = "PX")]
    detect_size: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DetectorKind {
    Yunet,
    Haar,
}

#[derive(Subcommand)]
enum BenchSuite {
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
        /// Expression model weights, as `mien detect --weights` takes them (default: vgg).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<PathBuf>,
        /// Test-time augmentation of each face, as `mien detect --tta` takes it for videos.
        #[arg(long, value_enum, default_value_t = VIDEO_TTA)]
        tta: Tta,
        #[arg(long)]
        json: bool,
    },
    /// Every kernel at the seed model's shapes, GPU vs the CPU backend.
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
        Command::Bench { suite: BenchSuite::Video { frames, clips, weights, tta, json } } => video::bench(&cli.global, frames, &clips, &expression_weights(&weights), tta, json),
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

fn bench_kernels(global: &Global, batches: &[usize], reps: usize, filter: Option<&str>, json: bool) -> Result<()> {
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

fn load_data(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset> {
    let start = std::time::Instant::now();
    let data = data::load(path, usage, skip_bad)?;
    report_loaded(path, &data, start);
    eprintln!("{}: {} images, per class {:?}", path.display(), data.len(), data.class_counts());
    Ok(data)
}

/// The warnings and skipped inputs of a load, each once.
fn report_loaded(path: &Path, data: &Dataset, start: std::time::Instant) {
    for warning in &data.warnings {
        eprintln!("warning: {warning}");
    }
    for skipped in &data.skipped {
        eprintln!("warning: skipped {skipped}");
    }
    eprintln!("{}: read in {:.1} s{}", path.display(), start.elapsed().as_secs_f64(), if data.skipped.is_empty() { String::new() } else { format!(", {} bad inputs skipped", data.skipped.len()) });
}

/// Train and validation sets: from a folder (train/ and test/) or a CSV (Training and
/// PublicTest rows), or with --val-split a part of the training images.
fn train_val(args: &TrainArgs) -> Result<(Dataset, Dataset)> {
    let start = std::time::Instant::now();
    let (mut train, val) = data::load_train_val(&args.data, args.skip_bad)?;
    report_loaded(&args.data, &train, start);
    let mut val = match args.val_split {
        Some(f) => train.split_off(f, 7),
        None => val,
    };
    if let Some(n) = args.subset {
        // Spread the subset over all classes: the folders are in class order.
        let pick = |d: &Dataset, n: usize| {
            let step = (d.len() / n.max(1)).max(1);
            let idx: Vec<usize> = (0..d.len()).step_by(step).take(n).collect();
            Dataset { images: idx.iter().flat_map(|&i| d.image(i).to_vec()).collect(), labels: idx.iter().map(|&i| d.labels[i]).collect(), ..Default::default() }
        };
        train = pick(&train, n);
        val = pick(&val, (n / 4).max(1));
    }
    eprintln!("training on {} images, validating on {}: per class {:?} and {:?}", train.len(), val.len(), train.class_counts(), val.class_counts());
    Ok((train, val))
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

/// The recipe the flags ask for, refused when it would make a meaningless run.
fn recipe_of(args: &TrainArgs) -> Result<Recipe> {
    let mut recipe = match args.recipe {
        RecipeChoice::Default => Recipe::default_recipe(),
        RecipeChoice::Adam => Recipe::adam_recipe(),
        RecipeChoice::Plateau => Recipe::plateau_recipe(),
        RecipeChoice::Original => Recipe::original(),
    };
    recipe.epochs = args.epochs.unwrap_or(recipe.epochs);
    recipe.lr = args.lr.unwrap_or(recipe.lr);
    recipe.batch = args.batch.unwrap_or(recipe.batch);
    recipe.seed = args.seed.unwrap_or(recipe.seed);
    recipe.patience = args.patience.unwrap_or(recipe.patience);
    recipe.class_weights |= args.class_weights;
    recipe.mirror_eval &= !args.no_mirror;
    recipe.optimizer = optimizer_of(args, recipe.optimizer)?;
    recipe.schedule = args.schedule.unwrap_or(recipe.schedule);
    recipe.warmup_epochs = args.warmup.unwrap_or(recipe.warmup_epochs);
    recipe.label_smoothing = args.label_smoothing.unwrap_or(recipe.label_smoothing);
    recipe.teachers = args.teacher.iter().map(|path| path.display().to_string()).collect();
    if !recipe.teachers.is_empty() {
        recipe.distill = args.distill.unwrap_or(DEFAULT_DISTILL);
    }
    let augment = &mut recipe.augment;
    augment.rotation_deg = args.rotation.unwrap_or(augment.rotation_deg);
    augment.shear_deg = args.shear.unwrap_or(augment.shear_deg);
    augment.zoom = args.zoom.unwrap_or(augment.zoom);
    augment.shift = args.shift.unwrap_or(augment.shift);
    augment.horizontal_flip &= !args.no_flip;
    augment.erase_probability = args.erase.unwrap_or(augment.erase_probability);
    augment.erase_fill = args.erase_fill.unwrap_or(augment.erase_fill);
    recipe.validate()?;
    if args.no_augment {
        recipe.augment = AugmentConfig::NONE;
    }
    if args.subset == Some(0) {
        bail!("--subset 0 leaves no images to train on");
    }
    if let Some(f) = args.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
        bail!("--val-split {f} must be above 0 and below 1");
    }
    Ok(recipe)
}

/// The recipe's optimizer as the flags change it. SGD's flags on Adam are refused rather
/// than ignored.
fn optimizer_of(args: &TrainArgs, recipe: OptimizerChoice) -> Result<OptimizerChoice> {
    let sgd = match (args.optimizer, recipe) {
        (Some(OptimizerKind::Adam), _) | (None, OptimizerChoice::Adam) => {
            if args.momentum.is_some() || args.weight_decay.is_some() || args.no_nesterov {
                bail!("--momentum, --weight-decay and --no-nesterov set SGD; add --optimizer sgd");
            }
            return Ok(OptimizerChoice::Adam);
        }
        (_, OptimizerChoice::Sgd(sgd)) => sgd,
        (Some(OptimizerKind::Sgd), OptimizerChoice::Adam) => SgdSettings::default(),
    };
    Ok(OptimizerChoice::Sgd(SgdSettings { momentum: args.momentum.unwrap_or(sgd.momentum), nesterov: sgd.nesterov && !args.no_nesterov, weight_decay: args.weight_decay.unwrap_or(sgd.weight_decay) }))
}

/// `train::evaluate` with a progress bar, taken off the terminal when it ends.
fn evaluate_with_progress<B: Backend>(models: &mut [Model<B>], backend: &B, data: &Dataset, batch: usize, tta: Tta) -> Result<train::Evaluation> {
    let mut progress = Progress { bar: None };
    let eval = train::evaluate_observed(models, backend, data, batch, tta, &mut progress);
    progress.clear();
    Ok(eval?)
}

/// The teachers' weight in the target when --teacher is given without --distill: labels and
/// teachers in equal parts.
const DEFAULT_DISTILL: f32 = 0.5;

/// Every training image's mean probabilities (with its mirror image) under `teachers`.
fn teacher_probabilities<B: Backend>(backend: &B, mut teachers: Ensemble<B>, train_set: &Dataset) -> Result<Vec<f32>> {
    println!("classifying the {} training images with the teachers ...", train_set.len());
    let eval = evaluate_with_progress(teachers.models_mut(), backend, train_set, 64, Tta::Mirror)?;
    println!("the teachers: {:.2} % of the training images right, mirror-averaged", 100.0 * eval.accuracy);
    Ok(eval.probs.concat())
}

/// Models for inference from `weights` (an ensemble if several), each file's own model or
/// `config`'s.
fn inference_models<B: Backend>(backend: &B, weights: &[PathBuf], config: Option<&Path>, precision: Precision) -> Result<Ensemble<B>> {
    let mut models = Vec::new();
    for weights in weights {
        let config = match config {
            Some(path) => ModelConfig::load(path)?,
            None => mien::nn::weights::config_of(weights)?,
        };
        let mut model = Model::new(backend, config, 0)?;
        let bytes = std::fs::read(weights).with_context(|| format!("{}: cannot read the weights", weights.display()))?;
        model.load_for_inference(backend, &bytes, weights)?;
        model.precision = precision;
        models.push(model);
    }
    Ok(Ensemble::new(models)?)
}

fn run_train<B: Backend>(backend: &B, args: &TrainArgs, recipe: &Recipe) -> Result<()> {
    let config = model_config(&args.model)?;
    let recipe = recipe.clone();
    let mut model = Model::new(backend, config, recipe.seed)?;
    // Weights that do not fit the model are refused before the data is read or --out made.
    if let Some(init) = &args.init {
        model.load(backend, init, Part::Value)?;
        println!("starting from the weights in {}", init.display());
    }
    // Teachers multiply in f32 whatever --precision says, so that a resumed run gets the same
    // targets on any CPU; their weights are checked before the data is read.
    let teachers = if args.teacher.is_empty() { None } else { Some(inference_models(backend, &args.teacher, None, Precision::F32)?) };
    let (mut train_set, val_set) = train_val(args)?;
    data::check_trainable(&train_set, &val_set)?;
    let files = RunFiles { dir: args.out.clone() };
    let start = match (args.resume, args.overwrite) {
        (true, _) => train::Start::Resume,
        (false, true) => train::Start::Overwrite,
        (false, false) => train::Start::New,
    };
    // The run folder is checked (and locked) before the teachers' minutes-long pass, so that a
    // wrong start is refused at once.
    let run = train::Run::open(&mut model, backend, &train_set, &val_set, &recipe, &files, start)?;
    if let Some(teachers) = teachers {
        let probs = match run.saved_teacher_probabilities(&train_set)? {
            Some(probs) => {
                println!("the teachers' probabilities of the training images: read back from {}", files.teacher_probabilities().display());
                probs
            }
            None => {
                let probs = teacher_probabilities(backend, teachers, &train_set)?;
                run.save_teacher_probabilities(&probs)?;
                probs
            }
        };
        train_set.set_teacher(probs)?;
    }
    let splits = [("train", train_set.class_counts().to_vec()), ("validation", val_set.class_counts().to_vec())];
    mien::plot::class_distribution(&args.out.join("class_distribution.png"), &data::CLASSES, &splits)?;
    println!("model {}: {} parameters; training on {}", model.config.name, model.parameter_count(), backend.describe());
    let state = run.train(&mut model, backend, &train_set, &val_set, &mut Progress { bar: None })?;
    if let Some(why) = &state.stopped {
        println!("{why}");
    }
    // The model now holds the best weights: their confusion matrix on the validation set.
    let eval = train::evaluate(std::slice::from_mut(&mut model), backend, &val_set, recipe.batch, recipe.validation_tta())?;
    mien::plot::confusion_matrix(&args.out.join("confusion.png"), &data::CLASSES, &eval.confusion)?;
    println!("best validation accuracy {:.2}% at epoch {}; weights in {}; plots and metrics in {}", 100.0 * state.best_accuracy, state.best_epoch, files.best().display(), args.out.display());
    Ok(())
}

fn run_eval<B: Backend>(backend: &B, args: &EvalArgs, precision: Precision) -> Result<()> {
    let mut models = inference_models(backend, &expression_weights(&args.weights), args.model.as_deref(), precision)?;
    let path = args.data.clone().unwrap_or_else(|| data::default_fer_dir().join("test"));
    let data = load_data(&path, args.usage, args.skip_bad)?;
    let eval = evaluate_with_progress(models.models_mut(), backend, &data, args.batch, args.tta)?;
    if let Some(path) = &args.logits {
        std::fs::write(path, serde_json::to_string(&eval.logits)?).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        mien::plot::confusion_matrix(&dir.join("confusion.png"), &data::CLASSES, &eval.confusion)?;
        mien::plot::reliability_diagram(&dir.join("reliability.png"), &eval.reliability)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &eval)?;
        if is_stdout(path) {
            return Ok(());
        }
    }
    let views = match eval.tta {
        Tta::None => String::new(),
        tta => format!(" with --tta {} ({:.2}% on single images)", tta_name(tta), 100.0 * eval.single_accuracy),
    };
    println!("{} images: accuracy {:.2}%{views}, loss {:.4} ({})", eval.images, 100.0 * eval.accuracy, eval.loss, backend.describe());
    println!("expected calibration error (15 bins): {:.2}%", 100.0 * eval.ece);
    println!("{:<10} {:>9} {:>7} {:>6} {:>8}", "class", "precision", "recall", "f1", "support");
    for c in &eval.per_class {
        println!("{:<10} {:>9.3} {:>7.3} {:>6.3} {:>8}", c.class, c.precision, c.recall, c.f1, c.support);
    }
    println!("confusion (rows: true, columns: predicted, order {}):", data::CLASSES.join(" "));
    for row in &eval.confusion {
        println!("  {}", row.iter().map(|v| format!("{v:>5}")).collect::<String>());
    }
    Ok(())
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
        vec![shipped(Path::new(SHIPPED_WEIGHTS))]
    } else {
        given.iter().map(|path| shipped_model_file(path, "safetensors")).collect()
    }
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

/// The image files named by the inputs: files as given, folders' images sorted by name. A
/// folder's other files are skipped with a warning; a missing input is an error before any work.
/// The images and the videos among `inputs`, folders listed (sorted): a stream or camera
/// address, or a file with a video extension, is a video; other files are images if they look
/// like one.
fn detect_inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let (mut images, mut videos) = (Vec::new(), Vec::new());
    for input in inputs {
        let name = input.to_string_lossy();
        if video::is_live_source(&name) || (input.is_file() && video::is_video_file(input)) {
            videos.push(name.into_owned());
        } else if input.is_dir() {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(input).with_context(|| format!("{}: cannot list", input.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
            entries.sort();
            for path in entries {
                let mut start = [0u8; 16];
                let read = std::fs::File::open(&path).and_then(|mut f| std::io::Read::read(&mut f, &mut start));
                match read {
                    _ if video::is_video_file(&path) => videos.push(path.to_string_lossy().into_owned()),
                    Ok(n) if mien::imageio::looks_like_image(&start[..n]) => images.push(path),
                    _ => eprintln!("warning: skipping {}: not an image or a video", path.display()),
                }
            }
        } else if input.is_file() {
            images.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    Ok((images, videos))
}

/// `--out`, created if missing; refused when it names something that is not a folder.
fn output_folder(out: &Path) -> Result<PathBuf> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("--out {}: cannot create the folder", out.display()))?;
    Ok(out.to_path_buf())
}

/// A name in `out` for each input's annotated copy, `<stem>.annotated.png`, with a counter
/// where two inputs share a stem or the name is one of the inputs: an input is never written
/// over, nor one output by another.
fn output_names(files: &[PathBuf], out: &Path, inputs: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut taken = HashSet::new();
    files
        .iter()
        .map(|path| {
            let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
            (1..)
                .map(|n| out.join(if n == 1 { format!("{stem}.annotated.png") } else { format!("{stem}.annotated-{n}.png") }))
                .find(|candidate| !is_input(candidate, inputs) && taken.insert(candidate.clone()))
                .expect("some counter gives a free name")
        })
        .collect()
}

/// The inputs as the file system resolves them, to tell whether an output would be one.
fn canonical_paths(files: &[PathBuf]) -> HashSet<PathBuf> {
    files.iter().filter_map(|p| p.canonicalize().ok()).collect()
}

/// Whether `path` names one of `inputs` (resolved by [`canonical_paths`]).
fn is_input(path: &Path, inputs: &HashSet<PathBuf>) -> bool {
    path.canonicalize().is_ok_and(|c| inputs.contains(&c))
}

/// Where face `n` (from 1) of the image annotated at `annotated` has its crop: the annotated
/// name with its `.annotated` made `.face<n>`, as unique as that name is.
fn crop_name(annotated: &Path, n: usize) -> PathBuf {
    let name = annotated.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let (head, tail) = name.rsplit_once(".annotated").unwrap_or((&name, ".png"));
    annotated.with_file_name(format!("{head}.face{n}{tail}"))
}

fn run_detect<B: Backend>(backend: B, gpu: Option<&gpu::Gpu>, args: &DetectArgs, out: &Path, precision: Precision) -> Result<()> {
    use mien::detect::{Cascade, DetectParams};
    use mien::imageio::{self, Decoded, OnDamage};
    use mien::pipeline::{self, DetectorChoice, ImageReport, Labeller};
    let detector = match args.detector {
        DetectorKind::Yunet => {
            let params = YuNetParams { score_threshold: args.score_threshold, nms_threshold: args.nms_threshold, top_k: args.top_k };
            params.validate()?;
            DetectorChoice::YuNet { params, min_size: args.min_size, size: args.detect_size.map_or(DetectSize::Full, DetectSize::AtMost) }
        }
        DetectorKind::Haar => {
            let params = DetectParams { scale_factor: args.scale_factor, min_neighbors: args.min_neighbors, min_size: (args.min_size, args.min_size), max_size: args.max_size.map(|m| (m, m)) };
            params.validate()?;
            DetectorChoice::Haar { cascade: Cascade::load(&shipped(&args.cascade))?, params }
        }
    };
    let (files, videos) = detect_inputs(&args.inputs)?;
    let video_options = VideoOptions { stride: args.stride, smooth_s: args.smooth, preset: args.x264_preset, ..VideoOptions::default() };
    if !videos.is_empty() {
        // Bad settings are refused before the models load.
        mien::track::Smoother::new(video_options.smooth_s)?;
        if args.stride == 0 {
            bail!("--stride 0: it must be 1 (every frame) or more");
        }
    }
    let weights = if args.no_emotion { Vec::new() } else { expression_weights(&args.weights) };
    let mut labeller =
        Labeller::new(backend, gpu, detector, &weights, args.tta.unwrap_or(Tta::Mirror), !args.no_align).context("loading the detector and the expression model (or pass --no-emotion)")?;
    labeller.set_precision(precision);
    let inputs = canonical_paths(&files);
    let outputs = output_names(&files, out, &inputs);
    if args.crops && !videos.is_empty() {
        eprintln!("warning: --crops writes the faces of images only, not of videos");
    }
    // With the JSON on standard output, everything else goes to standard error.
    let json_to_stdout = args.json.as_deref().is_some_and(is_stdout);
    let say = |line: String| if json_to_stdout { eprintln!("{line}") } else { println!("{line}") };
    let bar = (files.len() > 3).then(|| indicatif::ProgressBar::new(files.len() as u64));
    let (mut reports, mut failures) = (Vec::new(), Vec::new());
    for (path, annotated) in files.iter().zip(&outputs) {
        let mut label_one = || -> Result<ImageReport> {
            let Decoded { mut rgb, grey, .. } = imageio::read(path, OnDamage::Fail)?;
            let faces = labeller.faces(&rgb, &grey);
            for warning in labeller.take_warnings() {
                eprintln!("warning: {}: {warning}", path.display());
            }
            // Decoding errors name the file themselves; these do not.
            let faces = faces.with_context(|| format!("{}: finding and labelling faces", path.display()))?;
            pipeline::annotate(&mut rgb, &faces).with_context(|| format!("{}: drawing the faces", path.display()))?;
            rgb.save(annotated).with_context(|| format!("{}: cannot write", annotated.display()))?;
            let mut report = ImageReport::new(path.display().to_string(), rgb.dimensions(), &faces);
            report.annotated = Some(annotated.display().to_string());
            if args.crops {
                let crops = labeller.face_crops(&grey, &faces).with_context(|| format!("{}: cutting the face crops", path.display()))?;
                for (n, (face, pixels)) in report.faces.iter_mut().zip(crops.chunks(mien::data::PIXELS)).enumerate() {
                    let crop = crop_name(annotated, n + 1);
                    if is_input(&crop, &inputs) {
                        bail!("{}: is an input; its face crop is not written over it (choose another --out)", crop.display());
                    }
                    let side = mien::data::SIDE as u32;
                    image::GrayImage::from_raw(side, side, pixels.to_vec()).expect("48x48 bytes").save(&crop).with_context(|| format!("{}: cannot write", crop.display()))?;
                    face.crop = Some(crop.display().to_string());
                }
            }
            Ok(report)
        };
        match label_one() {
            Ok(report) => {
                let faces: Vec<String> = report.faces.iter().map(|f| format!("{} at {},{} {}x{}", f.emotion.as_deref().unwrap_or("face"), f.x, f.y, f.w, f.h)).collect();
                let line = format!("{}: {} face(s){}{} -> {}", path.display(), faces.len(), if faces.is_empty() { "" } else { ": " }, faces.join("; "), annotated.display());
                match &bar {
                    Some(b) => b.suspend(|| say(line)),
                    None => say(line),
                }
                reports.push(report);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failures.push(format!("{e:#}"));
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !files.is_empty() {
        say(format!("{} images, {} faces; annotated images in {}", reports.len(), reports.iter().map(|r| r.faces.len()).sum::<usize>(), out.display()));
    }
    if let Some(path) = &args.json {
        write_json(path, &reports)?;
    }
    if args.detect_size.is_none() {
        labeller.set_detect_size(DetectSize::Video);
    }
    labeller.set_tta(args.tta.unwrap_or(VIDEO_TTA));
    let request = video::VideoRequest { videos: &videos, inputs: &args.inputs, out, jsonl: args.jsonl, options: video_options };
    failures.extend(video::run_videos(&mut labeller, &request, &say));
    if !failures.is_empty() {
        bail!("{} of {} inputs failed:\n  {}", failures.len(), files.len() + videos.len(), failures.join("\n  "));
    }
    Ok(())
}

/// The scene the detection benchmarks and profiles frame: a montage of faces.
fn benchmark_scene() -> Result<image::GrayImage> {
    let path = shipped(Path::new("data/fixtures/haar/montage.png"));
    Ok(image::open(&path).with_context(|| format!("{}: cannot read the benchmark scene", path.display()))?.to_luma8())
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

/// The GPU a benchmark runs beside the CPU: any adapter (lavapipe included) unless --device
/// cpu; a missing adapter is an error only when --device gpu asked for one.
fn gpu_for_bench(global: &Global) -> Result<Option<gpu::Gpu>> {
    Ok(match global.device {
        DeviceChoice::Cpu => None,
        DeviceChoice::Gpu => Some(gpu::Gpu::new(&global.gpu_options())?),
        DeviceChoice::Auto => gpu::Gpu::new(&global.gpu_options()).map_err(|e| eprintln!("no GPU column: {e}")).ok(),
    })
}

fn bench_detect(global: &Global, cascade: &Path, reps: usize, json: bool) -> Result<()> {
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

fn bench_train<B: Backend>(backend: &B, batch: usize, reps: usize, models: &[PathBuf], precision: Precision, json: bool) -> Result<()> {
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
        Some(path) => ModelConfig::load(path)?,
        None => ModelConfig::original(),
    };
    let images: Vec<u8> = (0..batch * data::PIXELS).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    Ok((Model::new(backend, config, 1)?, images, labels))
}

fn profile_train(global: &Global, steps: usize, batch: usize, trace: &Path, model: Option<&Path>) -> Result<()> {
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

fn profile_infer(global: &Global, calls: usize, batch: usize, trace: &Path, model: Option<&Path>) -> Result<()> {
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
fn profile_yunet(global: &Global, frames: usize, (w, h): (u32, u32), trace: &Path) -> Result<()> {
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

fn profile_detect(global: &Global, frames: usize, (w, h): (u32, u32), trace: &Path, cascade: &Path) -> Result<()> {
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
