//! Video benchmark: frames per second of `mien detect` on a video, end to end (decoding,
//! detection, classification, tracking, drawing, encoding) and where the labelling thread's
//! time goes, at the sizes of [`DETECT_SIZES`], on clips made with ffmpeg from two pictures:
//! a portrait (one face, as in an interview) and the benchmark montage (nine faces, a crowd).
//! tools/peers.py runs `fer`'s `Video.analyze` on the same clips.

use super::{FrameSize, DETECT_SIZES};
use crate::error::{file_err, Result};
use crate::nn::Backend;
use crate::pipeline::video::{label_video, StageSeconds, VideoOptions, VideoOutputs};
use crate::pipeline::Labeller;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

/// The clips' frame rate.
pub const CLIP_FPS: u32 = 30;

/// One clip labelled on one device.
#[derive(Clone, Debug, Serialize)]
pub struct VideoBenchResult {
    /// The picture the clip pans across.
    pub scene: String,
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub clip: PathBuf,
    pub frames: u64,
    /// Frames per second from the first frame asked for to the finished file.
    pub fps: f64,
    pub face_frames: u64,
    pub seconds: StageSeconds,
}

/// The clip of `frames` frames at `size`: the picture `scene` scaled to 1.3 times the frame's
/// height (its aspect kept), widened with grey to at least 1.3 times the frame's width, and
/// panned across from left to right, so that faces move, as H.264 at [`CLIP_FPS`]. Made once;
/// an existing clip is reused.
pub fn make_clip(scene: &Path, folder: &Path, size: FrameSize, frames: u32) -> Result<PathBuf> {
    let FrameSize { width, height } = size;
    let name = scene.file_stem().map_or("scene".into(), |s| s.to_string_lossy().into_owned());
    let clip = folder.join(format!("{name}-{width}x{height}-{frames}.mp4"));
    if clip.exists() {
        return Ok(clip);
    }
    std::fs::create_dir_all(folder).map_err(|e| file_err(folder, format!("cannot create: {e}")))?;
    let seconds = frames as f64 / CLIP_FPS as f64;
    let (big_w, big_h) = (width * 13 / 10, height * 13 / 10);
    let filter = format!("scale=-2:{big_h},pad='max(iw\\,{big_w})':ih:'(ow-iw)/2':0:gray,crop={width}:{height}:'(iw-{width})*t/{seconds}':'(ih-{height})/2',format=yuv420p");
    let partial = clip.with_extension("partial.mp4");
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-i"])
        .arg(scene)
        .args(["-vf", &filter, "-r", &CLIP_FPS.to_string(), "-frames:v", &frames.to_string(), "-c:v", "libx264", "-preset", "veryfast"])
        .arg(&partial)
        .output()
        .map_err(|e| file_err(&clip, format!("cannot run ffmpeg to make the clip: {e}")))?;
    if !output.status.success() {
        return Err(file_err(&clip, format!("ffmpeg could not make the clip: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    std::fs::rename(&partial, &clip).map_err(|e| file_err(&clip, format!("cannot rename: {e}")))?;
    Ok(clip)
}

/// Labels `clip` with `labeller` as `mien detect` does (every frame, no smoothing), its outputs
/// in `out`, and times it.
pub fn bench_video<B: Backend>(labeller: &mut Labeller<'_, B>, device: &str, clip: &Path, out: &Path) -> Result<VideoBenchResult> {
    let info = crate::video::probe(&clip.to_string_lossy())?;
    let stem = clip.file_stem().map_or("clip".into(), |s| s.to_string_lossy().into_owned());
    let outputs = VideoOutputs::in_folder(out, &format!("{stem}-{device}"), false);
    let summary = label_video(labeller, &info, &outputs, VideoOptions::default(), &AtomicBool::new(false), |_| {})?;
    let scene = stem.split('-').next().unwrap_or_default().to_string();
    Ok(VideoBenchResult {
        scene,
        device: device.to_string(),
        width: info.width,
        height: info.height,
        clip: clip.to_path_buf(),
        frames: summary.frames,
        fps: summary.frames as f64 / summary.seconds.wall,
        face_frames: summary.video.face_frames,
        seconds: summary.seconds,
    })
}

/// The sizes the video benchmark runs at.
pub const VIDEO_SIZES: [FrameSize; 3] = DETECT_SIZES;
