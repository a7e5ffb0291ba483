//! `mien detect` on videos, live streams and cameras: which inputs are videos, the names of
//! their outputs, Ctrl-C, and a progress bar around [`mien::pipeline::video::label_video`].

use super::benchmarks::gpu_for_bench;
use super::{shipped, tta_name, Global};
use anyhow::Result;
use mien::augment::Tta;
use mien::bench::{self, VideoBenchResult};
use mien::detect::yunet::YuNetParams;
use mien::nn::{Backend, Cpu, GpuBackend};
use mien::pipeline::video::{label_video, VideoOptions, VideoOutputs, VideoSummary};
use mien::pipeline::Labeller;
use mien::pipeline::{DetectSize, DetectorChoice, VIDEO_DETECT_SIDES};
use mien::video::Preset;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// File extensions read as video.
const VIDEO_EXTENSIONS: [&str; 14] = ["mp4", "m4v", "mkv", "webm", "mov", "avi", "mpg", "mpeg", "ts", "mts", "flv", "wmv", "3gp", "ogv"];
/// URL schemes handed to ffmpeg as live streams.
const STREAM_SCHEMES: [&str; 8] = ["rtsp", "rtsps", "http", "https", "tcp", "udp", "rtmp", "srt"];

/// A URL ffmpeg reads as a stream, or a V4L2 camera.
pub fn is_live_source(input: &str) -> bool {
    let scheme = input.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    scheme.is_some_and(|s| STREAM_SCHEMES.contains(&s.as_str())) || input.starts_with("/dev/video")
}

/// A file whose extension says video.
pub fn is_video_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The stem of a video's outputs: the file's stem, or for a stream or camera its address with
/// every character that is not a letter, digit, '-' or '.' made '_' (`tcp___127.0.0.1_5000`).
fn stem_of(input: &str) -> String {
    if is_live_source(input) {
        input.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
    } else {
        Path::new(input).file_stem().map_or("video".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// Output names for each video in `out`, with `-2`, `-3`... after the stem where two videos
/// share one, or where a name would be one of the inputs: no input is written over.
fn outputs_for(videos: &[String], inputs: &[PathBuf], out: &Path, jsonl: bool) -> Vec<VideoOutputs> {
    let inputs: std::collections::HashSet<PathBuf> = inputs.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut stems = std::collections::HashSet::new();
    videos
        .iter()
        .map(|video| {
            let stem = stem_of(video);
            (1..)
                .map(|n| if n == 1 { stem.clone() } else { format!("{stem}-{n}") })
                .map(|stem| (stem.clone(), VideoOutputs::in_folder(out, &stem, jsonl)))
                .find(|(stem, o)| !o.all().iter().any(|p| p.canonicalize().is_ok_and(|c| inputs.contains(&c))) && stems.insert(stem.clone()))
                .expect("some counter gives free names")
                .1
        })
        .collect()
}

static STOP: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C asks the video loop to finish its outputs and stop; a second one ends the
/// process at once.
extern "C" fn on_interrupt(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn catch_interrupts() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

/// What `mien detect` asks of its videos.
pub struct VideoRequest<'a> {
    pub videos: &'a [String],
    /// Every input, so that no output is written over one.
    pub inputs: &'a [PathBuf],
    pub out: &'a Path,
    pub jsonl: bool,
    pub options: VideoOptions,
}

/// Labels each video; returns the failures (one message each) after doing the others.
pub fn run_videos<B: Backend>(labeller: &mut Labeller<'_, B>, request: &VideoRequest, say: &dyn Fn(String)) -> Vec<String> {
    catch_interrupts();
    let outputs = outputs_for(request.videos, request.inputs, request.out, request.jsonl);
    let mut failures = Vec::new();
    for (video, outputs) in request.videos.iter().zip(&outputs) {
        if STOP.load(Ordering::SeqCst) {
            failures.push(format!("{video}: not started (interrupted)"));
            continue;
        }
        match run_one(labeller, video, outputs, request.options) {
            Ok(summary) => say(describe(&summary, outputs)),
            Err(e) => {
                // Said at once when other videos follow (each may take minutes); the caller
                // lists every failure at the end.
                if request.videos.len() > 1 {
                    eprintln!("error: {e:#}");
                }
                failures.push(format!("{e:#}"));
            }
        }
    }
    failures
}

fn run_one<B: Backend>(labeller: &mut Labeller<'_, B>, video: &str, outputs: &VideoOutputs, options: VideoOptions) -> Result<VideoSummary> {
    let info = mien::video::probe(video)?;
    let bar = match info.frame_count.filter(|_| !info.live) {
        Some(frames) => indicatif::ProgressBar::new(frames).with_style(style("{msg} [{bar:30}] {pos}/{len} frames, {per_sec}, {eta} left")),
        None => indicatif::ProgressBar::no_length().with_style(style("{msg} {pos} frames, {per_sec}")),
    };
    bar.set_message(format!("{video} ({}x{})", info.width, info.height));
    let summary = label_video(labeller, &info, outputs, options, &STOP, |at| {
        bar.set_position(at.frames);
        if at.dropped > 0 {
            bar.set_message(format!("{video} at {:.1} s, {} frames dropped", at.time_s, at.dropped));
        }
    });
    bar.finish_and_clear();
    let summary = summary.map_err(|e| {
        // A video that breaks off still has its outputs for the frames done: say where.
        let written: Vec<String> = outputs.all().iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        if written.is_empty() {
            anyhow::Error::new(e)
        } else {
            anyhow::Error::new(e).context(format!("{video}: outputs written for the frames done: {}", written.join(", ")))
        }
    })?;
    if STOP.load(Ordering::SeqCst) {
        eprintln!("{video}: interrupted after {} frames; the outputs are complete up to there", summary.frames);
    }
    Ok(summary)
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template).expect("a valid progress template").progress_chars("=> ")
}

fn describe(s: &VideoSummary, outputs: &VideoOutputs) -> String {
    let dropped = if s.dropped_frames > 0 { format!(", {} dropped", s.dropped_frames) } else { String::new() };
    format!(
        "{}: {} frames ({} analysed{dropped}) over {:.1} s, {} track(s), {} face-frames -> {}, {}, {}, {}",
        s.input,
        s.frames,
        s.analysed_frames,
        s.duration_s,
        s.tracks.len(),
        s.video.face_frames,
        outputs.annotated.display(),
        outputs.csv.display(),
        outputs.summary.display(),
        outputs.timeline.display()
    )
}

/// `mien bench video`: each size's clip labelled on the GPU (when there is one) and the CPU.
pub fn bench(global: &Global, frames: u32, clips: &Path, weights: &[PathBuf], tta: Tta, json: bool) -> Result<()> {
    let gpu = gpu_for_bench(global)?;
    let scenes = ["data/photos/grace_hopper.jpg", "data/fixtures/haar/montage.png"].map(|p| shipped(Path::new(p)));
    let detector = || DetectorChoice::YuNet { params: YuNetParams::DETECT, min_size: 0, size: DetectSize::Video };
    let bar = bench::progress_bar();
    bar.set_length((scenes.len() * bench::VIDEO_SIZES.len() * (1 + gpu.is_some() as usize)) as u64);
    let mut results: Vec<VideoBenchResult> = Vec::new();
    for (scene, size) in scenes.iter().flat_map(|scene| bench::VIDEO_SIZES.map(|size| (scene, size))) {
        bar.set_message(format!("{}x{}", size.width, size.height));
        let clip = bench::make_clip(scene, clips, size, frames)?;
        if let Some(gpu) = &gpu {
            let mut labeller = Labeller::new(GpuBackend::new(gpu), Some(gpu), detector(), weights, tta, true)?;
            results.push(bench::bench_video(&mut labeller, &gpu.describe(), &clip, clips)?);
            bar.inc(1);
        }
        let mut labeller = Labeller::new(Cpu, None, detector(), weights, tta, true)?;
        labeller.set_precision(global.precision());
        results.push(bench::bench_video(&mut labeller, "cpu", &clip, clips)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!("mien detect on {frames}-frame clips at {} fps (YuNet on frames shrunk to half their longer side within {VIDEO_DETECT_SIDES:?} px, {} with --tta {}, aligned crops, tracking, H.264 out at x264 {}); ms a frame of each thread",
        bench::CLIP_FPS,
        weights.iter().map(|w| w.display().to_string()).collect::<Vec<_>>().join(","),
        tta_name(tta),
        Preset::default().name()
    );
    for r in &results {
        let per_frame = |s: f64| 1e3 * s / r.frames.max(1) as f64;
        let t = &r.seconds;
        println!(
            "{} {}x{} {}: {:.1} fps end to end ({} frames, {} faces); detection thread: decode wait {:.1}, detect {:.1}; labelling thread: detection wait {:.1}, classify {:.1}, track and draw {:.1}, encode wait {:.1}",
            r.scene,
            r.width,
            r.height,
            if r.device == "cpu" { format!("CPU {} threads", rayon::current_num_threads()) } else { format!("GPU {}", r.device) },
            r.fps,
            r.frames,
            r.face_frames,
            per_frame(t.decode),
            per_frame(t.detect),
            per_frame(t.wait),
            per_frame(t.classify),
            per_frame(t.annotate),
            per_frame(t.encode)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_told_apart_by_scheme_device_and_extension() {
        assert!(is_live_source("rtsp://camera.local/stream") && is_live_source("TCP://127.0.0.1:5000") && is_live_source("/dev/video0"));
        assert!(!is_live_source("talk.mp4") && !is_live_source("file://talk.mp4"));
        assert!(is_video_file(Path::new("a/talk.MP4")) && is_video_file(Path::new("x.webm")) && !is_video_file(Path::new("face.png")));
        assert_eq!(stem_of("tcp://127.0.0.1:5000?listen=1"), "tcp___127.0.0.1_5000_listen_1");
        assert_eq!(stem_of("clips/talk.mp4"), "talk");
    }

    #[test]
    fn two_videos_with_one_stem_get_distinct_outputs() {
        let videos = vec!["a/talk.mp4".to_string(), "b/talk.mkv".to_string()];
        let outputs = outputs_for(&videos, &[], Path::new("out"), false);
        assert_eq!(outputs[0].csv, Path::new("out/talk.faces.csv"));
        assert_eq!(outputs[1].csv, Path::new("out/talk-2.faces.csv"));
    }
}
