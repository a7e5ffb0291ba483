//! What an input is, from ffprobe's JSON.

use super::{ffmpeg_command, for_each_line, spawn, take_pipes, AudioStream, LogTail, SourceKind, VideoInfo};
use crate::error::{file_err, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::thread;

/// How long ffprobe may take on a live source before it is stopped: besides ffmpeg's own
/// network timeouts, a stream that trickles bytes must not keep mien waiting forever.

#[derive(Deserialize)]
struct ProbeOutput {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    index: usize,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    nb_frames: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    disposition: HashMap<String, i64>,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<SideData>,
}

#[derive(Deserialize)]
struct SideData {
    rotation: Option<f64>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    duration: Option<String>,
    start_time: Option<String>,
}

/// Asks ffprobe what `input` is: a video file, a URL with scheme rtsp, rtsps, http, https, tcp
/// or udp, or a V4L2 camera `/dev/videoN`. Fails, naming the input, when it cannot be read,
/// has no video stream, or its video has no frames or a codec ffmpeg does not know.
///
/// A live source (a URL or a camera) is not probed: it is opened once, by the decoder, since a
/// server that takes one connection (`ffmpeg ... tcp://...?listen=1`) or a camera busy with a
/// probe would not let it open a second time. Its size comes with its first frame; it has no
/// known rate, length or audio.
pub fn probe(input: &str) -> Result<VideoInfo> {
    let kind = SourceKind::of(input)?;
    if kind != SourceKind::File {
        return Ok(VideoInfo {
            input: input.to_string(),
            width: 0,
            height: 0,
            frame_rate: None,
            duration_s: None,
            frame_count: None,
            audio: None,
            live: true,
            start_time_s: 0.0,
            video_stream: 0,
            video_codec: String::new(),
        });
    }
    if kind == SourceKind::File {
        // ffprobe's own message for a missing file is fine, but this one comes without
        // starting a process and says which path was looked for.
        std::fs::metadata(input).map_err(|e| file_err(Path::new(input), format!("cannot read it: {e}")))?;
    }
    let mut command = ffmpeg_command("ffprobe");
    command.args(["-hide_banner", "-loglevel", "error", "-print_format", "json", "-show_streams", "-show_format"]);
    let input_args = kind.input_args(input);
    command.args(&input_args);
    // ffprobe starts its messages with the name it was given; the error names the input already.
    let message_prefix = format!("{}: ", input_args.last().map_or(input, String::as_str));
    let (status, json, complaints) = run_to_end(command, input, &message_prefix)?;
    if !status.success() {
        return Err(file_err(Path::new(input), format!("cannot be read as video: {}", complaints.quoted("ffprobe"))));
    }
    let parsed: ProbeOutput = serde_json::from_slice(&json).map_err(|e| file_err(Path::new(input), format!("ffprobe's description of it is not valid JSON: {e}")))?;
    video_info(input, parsed)
}

/// Runs `command` to its end, returning its exit status, its whole standard output and the
/// last lines of its standard error, less `message_prefix`.
fn run_to_end(mut command: std::process::Command, input: &str, message_prefix: &str) -> Result<(ExitStatus, Vec<u8>, LogTail)> {
    command.stdout(Stdio::piped());
    let mut child = spawn(&mut command)?;
    let (mut stdout, stderr) = take_pipes(&mut child);
    let message_prefix = message_prefix.to_string();
    // Both pipes are drained on threads so that neither can fill and stall ffprobe.
    let stdout_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).map(|_| bytes)
    });
    let stderr_reader = thread::spawn(move || {
        let mut tail = LogTail::default();
        for_each_line(stderr, |line| tail.push(line.strip_prefix(message_prefix.as_str()).unwrap_or(line)));
        tail
    });
    let status = child.wait().map_err(|e| file_err(Path::new(input), format!("waiting for ffprobe: {e}")))?;
    let json = stdout_reader.join().ok().and_then(|read| read.ok()).unwrap_or_default();
    let complaints = stderr_reader.join().unwrap_or_default();
    Ok((status, json, complaints))
}

/// The facts about `input` in ffprobe's description of it.
fn video_info(input: &str, probed: ProbeOutput) -> Result<VideoInfo> {
    let refuse = |reason: &str| file_err(Path::new(input), reason);
    let is_cover_art = |stream: &ProbeStream| stream.disposition.get("attached_pic") == Some(&1);
    let video = probed.streams.iter().find(|stream| stream.codec_type.as_deref() == Some("video") && !is_cover_art(stream)).ok_or_else(|| refuse("has no video stream"))?;
    let video_codec = video.codec_name.clone().ok_or_else(|| refuse("its video codec is unknown to this ffmpeg"))?;
    let (Some(width), Some(height)) = (video.width.filter(|&w| w > 0), video.height.filter(|&h| h > 0)) else {
        return Err(refuse(&format!("its {video_codec} video stream has no frame size")));
    };
    let frame_count = video.nb_frames.as_deref().and_then(|count| count.parse::<u64>().ok());
    if frame_count == Some(0) {
        return Err(refuse("its video stream has no frames"));
    }
    let (width, height) = if turned_a_quarter(video) { (height, width) } else { (width, height) };
    let frame_rate = [&video.avg_frame_rate, &video.r_frame_rate].into_iter().find_map(|rate| frames_per_second(rate.as_deref()?));
    let format = probed.format.as_ref();
    let duration_s = seconds(video.duration.as_deref()).or_else(|| seconds(format.and_then(|f| f.duration.as_deref()))).filter(|&d| d > 0.0);
    // A negative start is audio encoder priming before the first frame: the timeline still
    // starts at 0 there, as players show it.
    let start_time_s = seconds(format.and_then(|f| f.start_time.as_deref())).unwrap_or(0.0).max(0.0);
    let audio = probed.streams.iter().filter(|stream| stream.codec_type.as_deref() == Some("audio")).find_map(|stream| Some(AudioStream { index: stream.index, codec: stream.codec_name.clone()? }));
    Ok(VideoInfo { input: input.to_string(), width, height, frame_rate, duration_s, frame_count, audio, live: false, start_time_s, video_stream: video.index, video_codec })
}

/// Whether the stream's display matrix turns it by 90 or 270 degrees, which ffmpeg applies by
/// transposing the frames. Other angles keep the frame size.
fn turned_a_quarter(stream: &ProbeStream) -> bool {
    // Newer FFmpeg gives the rotation as side data, older as a "rotate" tag.
    let rotation = stream.side_data_list.iter().find_map(|side_data| side_data.rotation).or_else(|| stream.tags.get("rotate")?.parse().ok());
    let degrees = rotation.unwrap_or(0.0).rem_euclid(360.0);
    (degrees - 90.0).abs() < 1.0 || (degrees - 270.0).abs() < 1.0
}

/// A rate such as "30000/1001" as a number, or None for ffprobe's "0/0" (unknown).
fn frames_per_second(rate: &str) -> Option<f64> {
    let (numerator, denominator) = rate.split_once('/')?;
    let (numerator, denominator): (f64, f64) = (numerator.parse().ok()?, denominator.parse().ok()?);
    (numerator > 0.0 && denominator > 0.0).then(|| numerator / denominator)
}

/// ffprobe's seconds ("1.000000"), or None for "N/A" or a missing field.
fn seconds(text: Option<&str>) -> Option<f64> {
    text?.parse::<f64>().ok().filter(|value| value.is_finite())
}
