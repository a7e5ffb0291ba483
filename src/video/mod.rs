//! Video in and out through the `ffmpeg` and `ffprobe` programs: [`probe`] says what an input
//! is, a [`Decoder`] turns it into RGB frames with their timestamps, and an [`Encoder`] writes
//! annotated frames to an H.264 MP4 with the input's audio.
//!
//! Why programs and not library bindings: nothing of FFmpeg is needed to build mien (no
//! bindgen, clang or headers), it works with whatever FFmpeg build the user has (5.0 or newer,
//! for `-fps_mode`), mien's licence stays apart from a GPL FFmpeg build, and a hostile file that
//! crashes a decoder takes down an ffmpeg process, not mien. Frames cross pipes as raw bytes.
//!
//! Timestamps are the hard part, because video is often variable frame rate (phones, screen
//! recordings, streams) and raw frames on a pipe carry no time:
//! - Decoding: the `showinfo` filter logs every frame's timestamp to stderr, after a `settb`
//!   filter has put it in microseconds. A thread reads stderr (always draining it, so ffmpeg
//!   never blocks on a full pipe) and hands the timestamps over in order; the n-th frame on
//!   stdout gets the n-th timestamp. `-fps_mode passthrough` keeps ffmpeg from duplicating or
//!   dropping frames, so the two sequences stay paired.
//! - Encoding: frames go to ffmpeg in NUT, FFmpeg's own simple container (see nut.rs), which
//!   carries each frame's timestamp, and the encoder keeps them (`-fps_mode passthrough`, a
//!   microsecond encoder time base).
//! - Files are read with `-copyts` and times counted from the file's start time (its earliest
//!   timestamp over all streams, as players count), so that the audio copied from the same file
//!   by the encoder, shifted by the same start time, stays in sync. Without it ffmpeg shifts each
//!   process's output by the start of the streams it happens to use, which differ.
//!
//! The output is fragmented MP4 (a fragment at least every second), so a run that is killed
//! leaves a file that plays up to its last fragment.
//!
//! Live sources (network URLs and V4L2 cameras) run at their own pace: a thread reads frames as
//! they come and keeps only the newest few, counting the ones dropped when the consumer is
//! slower, so the delay behind the source stays bounded. Files never drop a frame; the decoder
//! simply waits for the consumer.
//!
//! Every ffmpeg runs in its own process group, so the Ctrl-C a terminal sends to mien does not
//! also stop the encoder in the middle of a fragment: mien decides when to finish.

mod decode;
mod encode;
mod nut;
mod probe;
#[cfg(test)]
mod tests;

pub use decode::Decoder;
pub use encode::{Encoder, Preset};
pub use probe::probe;

use crate::error::{quote_prefix, Error, Result};
use image::RgbImage;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};

/// What [`probe`] found out about an input.
#[derive(Clone, Debug)]
pub struct VideoInfo {
    /// The input as given: a file path, a URL or a camera device.
    pub input: String,
    /// The frame size as displayed: after the rotation the file asks for, which ffmpeg applies
    /// when decoding. 0 x 0 for a live source, whose frames say their size.
    pub width: u32,
    pub height: u32,
    /// Average frames per second, when the input says.
    pub frame_rate: Option<f64>,
    pub duration_s: Option<f64>,
    /// Frames in the video stream, when the container says.
    pub frame_count: Option<u64>,
    /// The first audio stream, if there is one.
    pub audio: Option<AudioStream>,
    /// A network stream or a camera: frames come at the source's pace and may be dropped.
    pub live: bool,
    /// Where the input's timeline starts, in seconds: its earliest timestamp over all streams
    /// (MPEG-TS starts at 1.4 s), or 0 when that is negative (audio encoder priming). Frame
    /// times count from here, as players count. 0 for live sources, whose times count from the
    /// first frame received.
    pub start_time_s: f64,
    /// ffmpeg's index of the video stream decoded (the first one that is not cover art); a
    /// live source's first video stream is decoded.
    pub video_stream: usize,
    /// Empty for a live source.
    pub video_codec: String,
}

/// An audio stream of the input, which the encoder copies into the output.
#[derive(Clone, Debug)]
pub struct AudioStream {
    /// ffmpeg's index of the stream in the input.
    pub index: usize,
    pub codec: String,
}

/// One decoded frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the video, from 0. On a live source the frames dropped leave gaps.
    pub index: u64,
    /// Presentation time in seconds from the start of the input.
    pub time_s: f64,
    pub rgb: RgbImage,
}

/// How ffmpeg has to be told to open an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceKind {
    File,
    Network,
    Camera,
}

/// URL schemes read as live network streams.
const NETWORK_SCHEMES: [&str; 6] = ["rtsp", "rtsps", "http", "https", "tcp", "udp"];

/// How long a network source may stay silent, connecting or reading, before ffmpeg gives up: a
/// dead URL fails in seconds instead of hanging.
const NETWORK_TIMEOUT_US: &str = "5000000";

impl SourceKind {
    fn of(input: &str) -> Result<SourceKind> {
        if let Some((scheme, _)) = input.split_once("://") {
            let looks_like_scheme = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
            if looks_like_scheme {
                if NETWORK_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Ok(SourceKind::Network);
                }
                return Err(Error::Invalid(format!("{input}: mien reads video files, {} URLs and /dev/videoN cameras, not {scheme} URLs", NETWORK_SCHEMES.join("/"))));
            }
        }
        let is_camera = input.strip_prefix("/dev/video").is_some_and(|number| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()));
        Ok(if is_camera { SourceKind::Camera } else { SourceKind::File })
    }

    /// ffmpeg's input options for this kind of source, ending with `-i` and the input.
    fn input_args(self, input: &str) -> Vec<String> {
        let mut args: Vec<String> = match self {
            // `file:` so that a file name with a colon is not taken for a protocol.
            SourceKind::File => return vec!["-i".into(), format!("file:{input}")],
            // -timeout bounds connecting and each read of the protocols used here, -rw_timeout
            // every read of any protocol underneath. -analyzeduration: the stream's format is
            // learnt from its first second (ffmpeg's default is five), so frames start coming
            // that much sooner.
            SourceKind::Network => ["-timeout", NETWORK_TIMEOUT_US, "-rw_timeout", NETWORK_TIMEOUT_US, "-analyzeduration", "1000000"].map(String::from).to_vec(),
            SourceKind::Camera => ["-f", "v4l2"].map(String::from).to_vec(),
        };
        args.extend(["-i".into(), input.into()]);
        args
    }
}

/// A command for an FFmpeg program with its standard input closed and, so that a Ctrl-C in the
/// terminal reaches only mien, in a process group of its own.
fn ffmpeg_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    #[cfg(windows)]
    {
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x200;
        std::os::windows::process::CommandExt::creation_flags(&mut command, CREATE_NEW_PROCESS_GROUP);
    }
    command
}

/// Starts `command`, saying clearly when the program is not installed.
fn spawn(command: &mut Command) -> Result<Child> {
    let program = command.get_program().to_string_lossy().into_owned();
    command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Unsupported { what: "video".into(), reason: format!("the {program} program was not found on the PATH; video needs FFmpeg 5.0 or newer installed") },
        _ => Error::Unsupported { what: "video".into(), reason: format!("cannot start {program}: {e}") },
    })
}

/// Calls `each` with every line `reader` gives until it ends, invalid UTF-8 replaced (ffmpeg
/// prints file metadata in whatever encoding the file has).
fn for_each_line(reader: impl Read, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        each(String::from_utf8_lossy(&line).trim_end());
        line.clear();
    }
}

/// The last few lines of an ffmpeg program's complaints, to quote in an error.
#[derive(Debug, Default)]
struct LogTail {
    lines: VecDeque<String>,
}

impl LogTail {
    const KEPT: usize = 5;

    /// Keeps `line`, less its level and the address of the object that printed it.
    fn push(&mut self, line: &str) {
        let line = LogLine::parse(line);
        if line.message.is_empty() {
            return;
        }
        if self.lines.len() == Self::KEPT {
            self.lines.pop_front();
        }
        self.lines.push_back(match line.context {
            Some(context) => format!("[{context}] {}", line.message),
            None => line.message.to_string(),
        });
    }

    /// The lines quoted, or a note that there were none, for the end of an error message.
    fn quoted(&self, program: &str) -> String {
        if self.lines.is_empty() {
            return format!("{program} printed no error");
        }
        let quoted: Vec<String> = self.lines.iter().map(|line| quote_prefix(line, 300)).collect();
        format!("{program} said {}", quoted.join(", "))
    }
}

/// The levels ffmpeg's log can print.
const LOG_LEVELS: [&str; 9] = ["quiet", "panic", "fatal", "error", "warning", "info", "verbose", "debug", "trace"];

/// A line of ffmpeg's log in its parts: `[h264 @ 0x55d0] [error] message` has the context
/// "h264" (the object that printed it, less its address), the level "error" (printed with
/// `-loglevel level+...`) and the message. A line may have neither context nor level.
#[derive(Debug, PartialEq)]
struct LogLine<'a> {
    context: Option<&'a str>,
    level: Option<&'a str>,
    message: &'a str,
}

impl<'a> LogLine<'a> {
    fn parse(line: &'a str) -> LogLine<'a> {
        let leading_tag = |text: &'a str| text.strip_prefix('[')?.split_once("] ");
        let mut parsed = LogLine { context: None, level: None, message: line };
        if let Some((context, rest)) = leading_tag(parsed.message).and_then(|(tag, rest)| Some((tag.split_once(" @ ")?.0, rest))) {
            parsed.context = Some(context);
            parsed.message = rest;
        }
        if let Some((level, rest)) = leading_tag(parsed.message).filter(|(tag, _)| LOG_LEVELS.contains(tag)) {
            parsed.level = Some(level);
            parsed.message = rest;
        }
        parsed
    }
}

/// The standard output and error of a child started with both piped.
fn take_pipes(child: &mut Child) -> (ChildStdout, ChildStderr) {
    let stdout = child.stdout.take().expect("the command's stdout is piped");
    let stderr = child.stderr.take().expect("ffmpeg_command pipes stderr");
    (stdout, stderr)
}
