//! Encoding frames to a fragmented H.264 MP4 that carries the input's audio.

use super::{ffmpeg_command, for_each_line, nut, spawn, Frame, LogTail, SourceKind, VideoInfo};
use crate::error::{file_err, shape_err, Result};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};

/// Frames waiting for the writer thread, beyond the one it is writing: enough to keep ffmpeg
/// fed while the caller prepares the next.
const FRAMES_IN_FLIGHT: usize = 2;

/// Audio codecs that go into MP4 as they are (and play there); any other is re-encoded to AAC.
const MP4_AUDIO_CODECS: [&str; 4] = ["aac", "mp3", "opus", "alac"];

/// x264's speed presets, fastest first. Each is about as good to look at (x264's default
/// constant quality, CRF 23) and trades encoding time for file size: on the 720p benchmark
/// montage, ultrafast writes 3.5 times veryfast's bytes and superfast 1.6 times, in 0.4 and
/// 0.7 times its encoding time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Preset {
    Ultrafast,
    /// The default: most of ultrafast's speed at under half its file size.
    #[default]
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
    Slow,
}

impl Preset {
    /// The name x264 knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Ultrafast => "ultrafast",
            Preset::Superfast => "superfast",
            Preset::Veryfast => "veryfast",
            Preset::Faster => "faster",
            Preset::Fast => "fast",
            Preset::Medium => "medium",
            Preset::Slow => "slow",
        }
    }
}

/// A running ffmpeg encoding frames to an MP4: H.264 (libx264 at a [`Preset`], yuv420p), every frame at its own
/// timestamp, so a variable frame rate stays as it was, and the input's audio. The file is
/// fragmented MP4, a fragment at least every second, so if mien is killed it still plays up to
/// its last fragment. Call [`finish`](Encoder::finish) at the end to learn whether ffmpeg
/// succeeded; dropping the encoder finishes it too, silently.
pub struct Encoder {
    output: PathBuf,
    width: u32,
    height: u32,
    /// Frames for the writer thread; None once closed.
    frames: Option<SyncSender<Frame>>,
    /// Writes the frames to ffmpeg's stdin as NUT; returns when the frames end or a write fails.
    writer: Option<JoinHandle<io::Result<()>>>,
    ffmpeg: Child,
    log_reader: Option<JoinHandle<LogTail>>,
    frames_sent: u64,
}

impl Encoder {
    /// Starts ffmpeg writing `output` (overwritten if it exists) for frames of `source`'s size.
    ///
    /// An odd width or height, which yuv420p cannot hold, gets one black column on the right or
    /// one black row at the bottom: every source pixel stays where it was, unscaled.
    ///
    /// The first audio stream of a file source is copied (re-encoded to AAC when MP4 cannot
    /// hold its codec), shifted by the source's start time as the decoder shifts the frames.
    /// A live source's audio is not recorded: opening the stream a second time for it would
    /// give audio out of step with the frames, and a camera cannot be opened twice.
    pub fn create(output: &Path, source: &VideoInfo, preset: Preset) -> Result<Encoder> {
        let mut command = ffmpeg_command("ffmpeg");
        // -copyts: the frames keep the times they are given, instead of being moved to start at 0.
        command.args(["-hide_banner", "-nostats", "-loglevel", "error", "-y", "-copyts", "-f", "nut", "-i", "pipe:0"]);
        let audio = source.audio.as_ref().filter(|_| !source.live);
        if audio.is_some() {
            command.args(["-itsoffset", &(-source.start_time_s).to_string()]);
            command.args(SourceKind::File.input_args(&source.input));
        }
        command.args(["-map", "0:v:0", "-c:v", "libx264", "-preset", preset.name(), "-pix_fmt", "yuv420p"]);
        let mut filters = Vec::new();
        if source.width % 2 == 1 || source.height % 2 == 1 {
            filters.push("pad=ceil(iw/2)*2:ceil(ih/2)*2");
        }
        // RGB to YUV by BT.709, and the file says so: ffmpeg converts by BT.601 unless told, and
        // players take untagged HD video for BT.709, which would shift its colours.
        filters.push("scale=out_color_matrix=bt709:out_range=tv");
        command.args(["-vf", &filters.join(",")]);
        command.args(["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]);
        // Each frame leaves with the time it came with: no frame duplicated or dropped to make
        // a constant rate, and a time base fine enough not to round times together.
        command.args(["-fps_mode", "passthrough", "-enc_time_base:v", "1/1000000"]);
        if let Some(audio) = audio {
            command.args(["-map", &format!("1:{}", audio.index)]);
            if audio.codec == "aac" {
                // AAC from MPEG-TS comes in ADTS packets, which MP4 stores without their headers.
                command.args(["-c:a", "copy", "-bsf:a", "aac_adtstoasc"]);
            } else if MP4_AUDIO_CODECS.contains(&audio.codec.as_str()) {
                command.args(["-c:a", "copy"]);
            } else {
                command.args(["-c:a", "aac"]);
            }
        }
        // delay_moov, not empty_moov: the header waits for the first fragment, so it can say by
        // how much B-frames delay the first frame, and the video starts at its true time.
        // flush_packets: each fragment reaches the file when it is complete, not when ffmpeg's
        // 32 KiB output buffer happens to fill, so a kill loses at most the fragment in progress.
        command.args(["-movflags", "+frag_keyframe+delay_moov+default_base_moof", "-frag_duration", "1000000", "-flush_packets", "1", "-f", "mp4"]);
        let mut target = OsString::from("file:");
        target.push(output.as_os_str());
        command.arg(target).stdin(Stdio::piped());

        let mut ffmpeg = spawn(&mut command)?;
        let stdin = ffmpeg.stdin.take().expect("the command's stdin is piped");
        let stderr = ffmpeg.stderr.take().expect("ffmpeg_command pipes stderr");
        let log_reader = thread::spawn(move || {
            let mut complaints = LogTail::default();
            for_each_line(stderr, |line| complaints.push(line));
            complaints
        });
        let (frames, frames_in) = mpsc::sync_channel(FRAMES_IN_FLIGHT);
        let (width, height) = (source.width, source.height);
        let writer = thread::spawn(move || write_nut(stdin, &frames_in, width, height));
        Ok(Encoder { output: output.to_path_buf(), width, height, frames: Some(frames), writer: Some(writer), ffmpeg, log_reader: Some(log_reader), frames_sent: 0 })
    }

    /// Queues `frame` to be encoded at its `time_s`. Frames come in order of time; one whose
    /// time is not after the previous frame's goes a microsecond after it (MP4 needs increasing
    /// times), and times before 0 become 0.
    pub fn write_frame(&mut self, frame: Frame) -> Result<()> {
        if frame.rgb.dimensions() != (self.width, self.height) {
            let (width, height) = frame.rgb.dimensions();
            return Err(shape_err("video encoder", format!("frame {} is {width}x{height}, the video {}x{}", frame.index, self.width, self.height)));
        }
        let Some(frames) = &self.frames else {
            return Err(file_err(&self.output, "the encoder has already stopped"));
        };
        if frames.send(frame).is_err() {
            // The writer has ended early: ffmpeg stopped reading.
            return Err(self.close().err().unwrap_or_else(|| file_err(&self.output, "ffmpeg stopped taking frames")));
        }
        self.frames_sent += 1;
        Ok(())
    }

    /// Ends the video and waits for ffmpeg to write the rest of the file; an error quotes what
    /// ffmpeg said.
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        let Some(frames) = self.frames.take() else {
            return Ok(());
        };
        // The writer ends after the last frame and closes ffmpeg's stdin: the end of the video.
        drop(frames);
        let written = self.writer.take().map_or(Ok(()), |writer| writer.join().unwrap_or_else(|_| Err(io::Error::other("the frame writer panicked"))));
        let status = self.ffmpeg.wait();
        let complaints = self.log_reader.take().and_then(|log_reader| log_reader.join().ok()).unwrap_or_default();
        if self.frames_sent == 0 {
            return Err(file_err(&self.output, "no frames were given to encode"));
        }
        let reason = match (status, written) {
            (Err(e), _) => format!("waiting for ffmpeg: {e}"),
            (Ok(status), _) if !status.success() => format!("ffmpeg failed ({status}): {}", complaints.quoted("ffmpeg")),
            (Ok(_), Err(e)) => format!("writing frames to ffmpeg: {e}"),
            (Ok(_), Ok(())) => return Ok(()),
        };
        Err(file_err(&self.output, reason))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The writer thread: the NUT header, then each frame as it comes, straight from its buffer.
fn write_nut(mut stdin: ChildStdin, frames: &Receiver<Frame>, width: u32, height: u32) -> io::Result<()> {
    block_sigpipe_on_this_thread();
    nut::write_header(&mut stdin, width, height)?;
    let mut previous_pts = None;
    for frame in frames {
        let pts = frame_pts(frame.time_s, previous_pts);
        nut::write_frame(&mut stdin, pts, frame.rgb.as_raw())?;
        previous_pts = Some(pts);
    }
    Ok(())
}

/// A frame's time in NUT's microseconds: not before 0, and after the previous frame's.
fn frame_pts(time_s: f64, previous_pts: Option<u64>) -> u64 {
    // `as` saturates: a negative or NaN time becomes 0.
    let pts = (time_s * nut::TIME_BASE_DEN as f64).round() as u64;
    match previous_pts {
        Some(previous) if pts <= previous => previous + 1,
        _ => pts,
    }
}

/// Makes a write to ffmpeg's stdin after ffmpeg has died fail with EPIPE instead of killing
/// mien: the `mien` binary gives SIGPIPE its default action, ending the process, so that
/// `mien ... | head` ends quietly. A broken pipe signals the thread that wrote, so blocking the
/// signal on this thread alone leaves the rest of the process as it was.
#[cfg(unix)]
fn block_sigpipe_on_this_thread() {
    // SAFETY: the set is initialised by sigemptyset before use, and pthread_sigmask changes
    // only the calling thread's mask.
    unsafe {
        let mut signals: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut signals);
        libc::sigaddset(&mut signals, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
    }
}

#[cfg(not(unix))]
fn block_sigpipe_on_this_thread() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::tests::{described_source, ffprobe_frame_times, Scratch};
    use image::RgbImage;
    use std::time::{Duration, Instant};

    #[test]
    fn frame_times_become_increasing_microseconds() {
        assert_eq!(frame_pts(1.5, None), 1_500_000);
        assert_eq!(frame_pts(-0.02, None), 0);
        assert_eq!(frame_pts(f64::NAN, None), 0);
        assert_eq!(frame_pts(0.9999994, Some(999_999)), 1_000_000);
        assert_eq!(frame_pts(0.5, Some(600_000)), 600_001);
    }

    #[test]
    fn killed_encoder_leaves_a_playable_file() {
        let scratch = Scratch::new("killed");
        let output = scratch.path("killed.mp4");
        let mut encoder = Encoder::create(&output, &described_source("unused.mp4", 160, 120, false), Preset::default()).unwrap();
        for index in 0..150u64 {
            let shade = (index * 7 % 256) as u8;
            encoder.write_frame(Frame { index, time_s: index as f64 / 30.0, rgb: RgbImage::from_pixel(160, 120, image::Rgb([shade, 255 - shade, 128])) }).unwrap();
        }
        // ffmpeg holds the last fragment until its input ends; wait for two complete ones.
        let started = Instant::now();
        while std::fs::read(&output).map_or(0, |bytes| bytes.windows(4).filter(|window| window == b"moof").count()) < 2 {
            assert!(started.elapsed() < Duration::from_secs(20), "no fragments written");
            std::thread::sleep(Duration::from_millis(20));
        }
        encoder.ffmpeg.kill().unwrap();
        assert!(encoder.finish().is_err(), "a killed ffmpeg is a failure");
        let frames = ffprobe_frame_times(&output).len();
        assert!(frames > 0 && frames < 150, "{frames} frames readable");
    }
}
