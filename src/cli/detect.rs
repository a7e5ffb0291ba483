//! `mien detect`: its flags, its inputs and outputs, and the labelling of images (videos:
//! [`super::video`]).

use super::{expression_weights, is_stdout, shipped, video, write_json};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mien::augment::Tta;
use mien::detect::yunet::YuNetParams;
use mien::gpu;
use mien::kernels::conv2d::Precision;
use mien::nn::Backend;
use mien::pipeline::video::{VideoOptions, VIDEO_MODELS, VIDEO_TTA};
use mien::pipeline::DetectSize;
use mien::video::Preset;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(super) struct DetectArgs {
    /// Images, videos (mp4, mkv, webm, mov, avi...), live streams (rtsp://, http(s)://, tcp://,
    /// udp://...), cameras (/dev/videoN), or folders of images and videos (other files are
    /// skipped with a warning).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Folder for the outputs: `<name>.annotated.png` per image; per video
    /// `<name>.annotated.mp4`, `<name>.faces.csv`, `<name>.summary.json` and
    /// `<name>.timeline.png`. Never an input's name.
    #[arg(long, default_value = "out")]
    pub(super) out: PathBuf,
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
    /// (vgg, original, ...). Several, separated by commas, are an ensemble: each face gets the
    /// mean of their probabilities. Default: the shipped ensemble for images, its first model
    /// for videos.
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
pub(super) enum DetectorKind {
    Yunet,
    Haar,
}

/// The images and the videos among `inputs`, folders listed (sorted by name): a stream or
/// camera address, or a file with a video extension, is a video; other files are images if they
/// look like one. A folder's other files are skipped with a warning; a missing input is an error
/// before any work.
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

pub(super) fn run_detect<B: Backend>(backend: B, gpu: Option<&gpu::Gpu>, args: &DetectArgs, out: &Path, precision: Precision) -> Result<()> {
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
    if args.weights.is_empty() {
        labeller.keep_models(VIDEO_MODELS);
    }
    let request = video::VideoRequest { videos: &videos, inputs: &args.inputs, out, jsonl: args.jsonl, options: video_options };
    failures.extend(video::run_videos(&mut labeller, &request, &say));
    if !failures.is_empty() {
        bail!("{} of {} inputs failed:\n  {}", failures.len(), files.len() + videos.len(), failures.join("\n  "));
    }
    Ok(())
}
