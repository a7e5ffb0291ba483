//! Decoding an input to RGB frames with their timestamps.

use super::{ffmpeg_command, for_each_line, spawn, take_pipes, Frame, LogLine, LogTail, SourceKind, VideoInfo};
use crate::error::{file_err, Result};
use crate::imageio::MAX_PIXELS;
use image::RgbImage;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

/// Frames decoded ahead of the consumer from a file: enough to decode while the consumer works.
const FILE_QUEUE: usize = 4;
/// Frames kept from a live source: the newest two, so the consumer is never more than two
/// frames behind the source.
const LIVE_QUEUE: usize = 2;

/// A running ffmpeg decoding one input's video to RGB frames, in order, each with its own
/// presentation time. Iterate over it; an error, if the input is damaged or the stream breaks,
/// comes after the frames decoded before the damage, as the last item.
pub struct Decoder {
    input: String,
    ffmpeg: Child,
    queue: Arc<FrameQueue>,
    /// Reads stdout into frames.
    reader: Option<JoinHandle<ReadEnd>>,
    /// Reads stderr: timestamps for the reader, complaints for the end.
    log_reader: Option<JoinHandle<DecoderLog>>,
    /// Set by `stop`: the end of the stream is then no error.
    stopped: bool,
}

impl Decoder {
    /// Starts decoding the input `info` describes (from [`probe`](super::probe)). A file's
    /// frames come out at its displayed size `info.width` x `info.height`: rotated as the input
    /// asks, and scaled should the stream change size midway. A live source's size is not known
    /// beforehand (0 x 0): each frame comes at the size ffmpeg logs for it.
    pub fn open(info: &VideoInfo) -> Result<Decoder> {
        let kind = SourceKind::of(&info.input)?;
        let size_known = (info.width, info.height) != (0, 0);
        if size_known {
            check_size(&info.input, info.width, info.height)?;
        }
        let mut command = ffmpeg_command("ffmpeg");
        // level+info: each line says its level, to tell errors from showinfo's lines.
        command.args(["-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info"]);
        if kind == SourceKind::File {
            command.arg("-copyts");
        }
        command.args(kind.input_args(&info.input));
        let mut filters = "settb=AVTB,showinfo=checksum=0".to_string();
        if size_known {
            filters += &format!(",scale={}:{}", info.width, info.height);
        }
        let stream = if info.live { "0:v:0".to_string() } else { format!("0:{}", info.video_stream) };
        command.args(["-map", &stream, "-vf", &filters]);
        command.args(["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]);
        command.stdout(Stdio::piped());
        let mut ffmpeg = spawn(&mut command)?;
        let (stdout, stderr) = take_pipes(&mut ffmpeg);

        let (frame_logs, frame_logs_in) = mpsc::channel();
        let log_reader = thread::spawn(move || read_log(stderr, frame_logs));
        let queue = Arc::new(FrameQueue::new(if info.live { LIVE_QUEUE } else { FILE_QUEUE }, info.live));
        let frame_reader = FrameReader {
            stdout,
            frame_logs: frame_logs_in,
            input: info.input.clone(),
            size: size_known.then_some((info.width, info.height)),
            start_time_s: if kind == SourceKind::File { info.start_time_s } else { 0.0 },
            frame_rate: info.frame_rate,
            frames_read: 0,
            previous_time_s: None,
        };
        let reader_queue = Arc::clone(&queue);
        let reader = thread::spawn(move || {
            let end = frame_reader.run(&reader_queue);
            reader_queue.finish();
            end
        });
        Ok(Decoder { input: info.input.clone(), ffmpeg, queue, reader: Some(reader), log_reader: Some(log_reader), stopped: false })
    }

    /// Frames a live source delivered that were dropped because the consumer was slower.
    /// Always 0 for a file.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Stops ffmpeg and the threads, dropping the frames not taken yet. The iterator then ends
    /// without an error. Called on drop.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.queue.close();
        // Killing an ffmpeg that has already exited fails harmlessly.
        let _ = self.ffmpeg.kill();
        let _ = self.ffmpeg.wait();
        // With ffmpeg gone both pipes end, so both threads end.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(log_reader) = self.log_reader.take() {
            let _ = log_reader.join();
        }
    }

    /// After the last frame: the error, if the stream did not end well.
    fn end_of_stream(&mut self, reader: JoinHandle<ReadEnd>) -> Option<crate::Error> {
        let read = reader.join().unwrap_or_else(|_| ReadEnd { frames_read: 0, problem: Some("the frame reader panicked".into()) });
        let status = self.ffmpeg.wait();
        let log = self.log_reader.take().and_then(|log_reader| log_reader.join().ok()).unwrap_or_default();
        if self.stopped {
            return None;
        }
        let failure = match (read.problem, status) {
            (Some(problem), _) => Some(problem),
            (None, Err(e)) => Some(format!("waiting for ffmpeg: {e}")),
            (None, Ok(status)) if !status.success() => Some(format!("ffmpeg ended with {status}")),
            // ffmpeg exits with 0 after decoding a truncated file, but it says so.
            (None, Ok(_)) if log.saw_error => Some("ffmpeg reported errors".to_string()),
            (None, Ok(_)) => None,
        };
        let reason = match failure {
            Some(failure) => format!("decoding stopped after {} frames, {failure}: {}", read.frames_read, log.complaints.quoted("ffmpeg")),
            None if read.frames_read == 0 => "no video frames could be decoded".to_string(),
            None => return None,
        };
        Some(file_err(Path::new(&self.input), reason))
    }
}

impl Iterator for Decoder {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        if let Some(frame) = self.queue.pop() {
            return Some(Ok(frame));
        }
        // The first time the queue runs dry ends the stream; later calls find no reader.
        let reader = self.reader.take()?;
        self.end_of_stream(reader).map(Err)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns the raw frames on ffmpeg's stdout into frames, each with the timestamp (and, for a
/// live source, the size) that showinfo logged for it. The log line comes first: showinfo runs
/// before the frame is written.
struct FrameReader {
    stdout: ChildStdout,
    frame_logs: Receiver<FrameLog>,
    input: String,
    /// Every frame's size, when known beforehand; otherwise each frame's logged size.
    size: Option<(u32, u32)>,
    /// Subtracted from every timestamp, so that times count from the input's start.
    start_time_s: f64,
    /// For the rare frame without a timestamp, which then follows the one before by a frame.
    frame_rate: Option<f64>,
    frames_read: u64,
    previous_time_s: Option<f64>,
}

/// How a [`FrameReader`] ended.
struct ReadEnd {
    frames_read: u64,
    /// What went wrong, if the stream did not simply end (or the consumer stop).
    problem: Option<String>,
}

impl FrameReader {
    /// Moves frames into `queue` until the stream ends or the consumer stops.
    fn run(mut self, queue: &FrameQueue) -> ReadEnd {
        let problem = loop {
            match self.next_frame() {
                Ok(Some(frame)) => {
                    if !queue.push(frame) {
                        break None; // the consumer stopped
                    }
                }
                Ok(None) => break None,
                Err(problem) => break Some(problem),
            }
        };
        ReadEnd { frames_read: self.frames_read, problem }
    }

    /// The next frame, or None at the end of the stream.
    fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        let index = self.frames_read;
        let Ok(logged) = self.frame_logs.recv() else {
            // ffmpeg has logged its last frame: the stream ends here, unless bytes still come.
            let mut extra = [0u8; 1];
            return match fill(&mut self.stdout, &mut extra) {
                Ok(0) => Ok(None),
                Ok(_) => Err(format!("ffmpeg gave frame {index} without logging it")),
                Err(e) => Err(format!("reading frame {index} from ffmpeg: {e}")),
            };
        };
        let (width, height) = match (self.size, logged.size) {
            (Some(size), _) | (None, Some(size)) => size,
            (None, None) => return Err(format!("ffmpeg logged no size for frame {index}")),
        };
        check_size(&self.input, width, height).map_err(|e| e.to_string())?;
        let frame_bytes = width as usize * height as usize * 3;
        let mut rgb = vec![0u8; frame_bytes];
        let filled = fill(&mut self.stdout, &mut rgb).map_err(|e| format!("reading frame {index} from ffmpeg: {e}"))?;
        if filled == 0 {
            return Ok(None);
        }
        if filled < frame_bytes {
            return Err(format!("the stream ended inside frame {index} ({filled} of {frame_bytes} bytes)"));
        }
        let time_s = match (logged.pts, self.previous_time_s) {
            (Some(microseconds), _) => microseconds as f64 / 1e6 - self.start_time_s,
            (None, Some(previous)) => previous + self.frame_rate.map_or(0.0, |rate| 1.0 / rate),
            (None, None) => 0.0,
        };
        self.previous_time_s = Some(time_s);
        self.frames_read += 1;
        let rgb = RgbImage::from_raw(width, height, rgb).expect("the buffer holds width x height x 3 bytes");
        Ok(Some(Frame { index, time_s, rgb }))
    }
}

/// Refuses frame sizes mien cannot hold.
fn check_size(input: &str, width: u32, height: u32) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 || pixels > MAX_PIXELS {
        return Err(file_err(Path::new(input), format!("a frame size of {width}x{height} is not one mien can decode")));
    }
    Ok(())
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What showinfo logs of a frame: its timestamp in microseconds (None when it has none) and
/// its size.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FrameLog {
    pts: Option<i64>,
    size: Option<(u32, u32)>,
}

/// What the decoding ffmpeg's stderr said besides the timestamps.
#[derive(Default)]
struct DecoderLog {
    /// Its last warnings and errors.
    complaints: LogTail,
    /// Whether any line was an error.
    saw_error: bool,
}

/// Reads the decoding ffmpeg's stderr to its end: showinfo's frame lines go to `frame_logs` as
/// they come, warnings and errors into the returned log, the rest is ignored.
fn read_log(stderr: impl Read, frame_logs: Sender<FrameLog>) -> DecoderLog {
    let mut log = DecoderLog::default();
    for_each_line(stderr, |text| {
        let line = LogLine::parse(text);
        if let Some(frame) = showinfo_frame(&line) {
            // The reader may be gone (stopped); the log is still drained to the end.
            let _ = frame_logs.send(frame);
            return;
        }
        match line.level {
            Some("warning") => log.complaints.push(text),
            Some("error" | "fatal" | "panic") => {
                log.saw_error = true;
                log.complaints.push(text);
            }
            _ => {}
        }
    });
    log
}

/// The timestamp and size in a showinfo frame line, such as
/// `[Parsed_showinfo_1 @ 0x55d0] [info] n:   0 pts:  40000 pts_time:0.04 pos: ... s:160x120 ...`.
fn showinfo_frame(line: &LogLine) -> Option<FrameLog> {
    if !line.context?.starts_with("Parsed_showinfo_") {
        return None;
    }
    let value = line.message.strip_prefix("n:")?.split_once(" pts:")?.1.split_whitespace().next()?;
    let size = line.message.split_whitespace().find_map(|field| field.strip_prefix("s:")?.split_once('x')).and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    Some(FrameLog { pts: value.parse().ok(), size })
}

/// The frames between the reader thread and the consumer. A file's reader waits when the queue
/// is full; a live source's reader makes room by dropping the oldest frame instead.
struct FrameQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
    capacity: usize,
    drop_oldest: bool,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Frame>,
    dropped: u64,
    /// The reader has put its last frame.
    finished: bool,
    /// The consumer has stopped taking frames.
    closed: bool,
}

impl FrameQueue {
    fn new(capacity: usize, drop_oldest: bool) -> FrameQueue {
        FrameQueue { state: Mutex::new(QueueState::default()), changed: Condvar::new(), capacity, drop_oldest }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent at every step, so a thread that panicked holding the lock
        // left nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
        self.changed.wait(state).unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a frame; false when the consumer has stopped and frames are no longer wanted.
    fn push(&self, frame: Frame) -> bool {
        let mut state = self.lock();
        while state.frames.len() >= self.capacity && !state.closed {
            if self.drop_oldest {
                state.frames.pop_front();
                state.dropped += 1;
            } else {
                state = self.wait(state);
            }
        }
        if state.closed {
            return false;
        }
        state.frames.push_back(frame);
        self.changed.notify_all();
        true
    }

    /// The oldest frame, waiting for one; None once the reader has finished and all are taken.
    fn pop(&self) -> Option<Frame> {
        let mut state = self.lock();
        loop {
            if let Some(frame) = state.frames.pop_front() {
                self.changed.notify_all();
                return Some(frame);
            }
            if state.finished || state.closed {
                return None;
            }
            state = self.wait(state);
        }
    }

    fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames.clear();
        self.changed.notify_all();
    }

    fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn showinfo_lines_give_timestamps() {
        let pts = |text| showinfo_frame(&LogLine::parse(text));
        assert_eq!(
            pts("[Parsed_showinfo_1 @ 0x5583de0ba200] [info] n:  12 pts: 400000 pts_time:0.4     pos:    25263 fmt:yuv420p s:160x120 iskey:0 type:B"),
            Some(FrameLog { pts: Some(400_000), size: Some((160, 120)) })
        );
        assert_eq!(pts("[Parsed_showinfo_1 @ 0x1] [info] n:   3 pts:  NOPTS pts_time:NOPTS"), Some(FrameLog { pts: None, size: None }));
        assert_eq!(pts("[Parsed_showinfo_1 @ 0x1] [info] config in time_base: 1/1000000, frame_rate: 30/1"), None);
        assert_eq!(pts("[info]     title           : [Parsed_showinfo_1 @ 0x1] [info] n: 0 pts: 5"), None);
    }

    #[test]
    fn a_full_live_queue_drops_its_oldest_frame() {
        let frame = |index| Frame { index, time_s: 0.0, rgb: RgbImage::new(1, 1) };
        let queue = FrameQueue::new(2, true);
        for index in 0..5 {
            assert!(queue.push(frame(index)));
        }
        queue.finish();
        assert_eq!(queue.dropped(), 3);
        assert_eq!([queue.pop().map(|f| f.index), queue.pop().map(|f| f.index), queue.pop().map(|f| f.index)], [Some(3), Some(4), None]);
    }
}
