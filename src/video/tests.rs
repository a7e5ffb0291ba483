//! Tests on small clips that ffmpeg makes at test time.

use super::*;
use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A folder of its own for one test, removed at the end.
pub(super) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub(super) fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mien-video-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs ffmpeg with `args` to make `name` in the folder, returning its path.
    fn make(&self, name: &str, args: &[impl AsRef<OsStr>]) -> PathBuf {
        let path = self.path(name);
        let status = Command::new("ffmpeg").args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]).args(args).arg(&path).status().unwrap();
        assert!(status.success(), "ffmpeg could not make {name}");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// ffmpeg arguments for `frames` frames of its test pattern at `size` and `rate`, in H.264.
fn pattern(size: &str, rate: u32, frames: u32) -> Vec<String> {
    let source = format!("testsrc2=size={size}:rate={rate}");
    ["-f", "lavfi", "-i", &source, "-frames:v", &frames.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"].map(String::from).to_vec()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The presentation time of every video frame of `path`, as ffprobe reads them.
pub(super) fn ffprobe_frame_times(path: &Path) -> Vec<f64> {
    let output = Command::new("ffprobe").args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0"]).arg(path).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines().filter_map(|line| line.split(',').next()?.trim().parse().ok()).collect()
}

/// Each stream of `path` as "type codec", such as "audio aac".
fn ffprobe_streams(path: &Path) -> Vec<String> {
    let output = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "csv=p=0"]).arg(path).output().unwrap();
    String::from_utf8(output.stdout).unwrap().lines().map(|line| line.split(',').rev().collect::<Vec<_>>().join(" ")).collect()
}

fn assert_times_match(found: &[f64], expected: &[f64]) {
    assert_eq!(found.len(), expected.len(), "frame counts differ: {found:?} against {expected:?}");
    for (index, (found, expected)) in found.iter().zip(expected).enumerate() {
        assert!((found - expected).abs() < 1e-3, "frame {index} at {found} s, expected {expected} s");
    }
}

fn decode_all(info: &VideoInfo) -> Vec<Frame> {
    Decoder::open(info).unwrap().collect::<Result<Vec<_>>>().unwrap()
}

/// The mean absolute difference of two images' bytes over the area of the first.
fn mean_difference(a: &RgbImage, b: &RgbImage) -> f64 {
    let mut total = 0u64;
    for (x, y, pixel) in a.enumerate_pixels() {
        total += pixel.0.iter().zip(b.get_pixel(x, y).0).map(|(&p, q)| u64::from(p.abs_diff(q))).sum::<u64>();
    }
    total as f64 / (a.width() * a.height() * 3) as f64
}

/// A source described by hand, for tests with no file to probe.
pub(super) fn described_source(input: &str, width: u32, height: u32, live: bool) -> VideoInfo {
    VideoInfo { input: input.into(), width, height, frame_rate: None, duration_s: None, frame_count: None, audio: None, live, start_time_s: 0.0, video_stream: 0, video_codec: "rawvideo".into() }
}

fn error_text<T: std::fmt::Debug>(result: Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn inputs_are_told_apart_by_their_names() {
    assert_eq!(SourceKind::of("clip.mp4").unwrap(), SourceKind::File);
    assert_eq!(SourceKind::of("dir/with:colon.mkv").unwrap(), SourceKind::File);
    assert_eq!(SourceKind::of("rtsp://camera/stream").unwrap(), SourceKind::Network);
    assert_eq!(SourceKind::of("HTTPS://host/live.m3u8").unwrap(), SourceKind::Network);
    assert_eq!(SourceKind::of("/dev/video0").unwrap(), SourceKind::Camera);
    assert_eq!(SourceKind::of("/dev/videos").unwrap(), SourceKind::File);
    let refused = error_text(SourceKind::of("ftp://host/clip.mp4"));
    assert!(refused.contains("ftp://host/clip.mp4") && refused.contains("not ftp URLs"), "{refused}");
}

#[test]
fn log_lines_are_split_into_context_level_and_message() {
    let line = LogLine::parse("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x561b39b36940] [error] stream 0, offset 0x260f: partial file");
    assert_eq!(line, LogLine { context: Some("mov,mp4,m4a,3gp,3g2,mj2"), level: Some("error"), message: "stream 0, offset 0x260f: partial file" });
    let line = LogLine::parse("[warning] clip.mp4: corrupt input packet in stream 0");
    assert_eq!(line, LogLine { context: None, level: Some("warning"), message: "clip.mp4: corrupt input packet in stream 0" });
    let line = LogLine::parse("[tcp @ 0x5650] Connection to tcp://127.0.0.1:1 failed: Connection refused");
    assert_eq!(line, LogLine { context: Some("tcp"), level: None, message: "Connection to tcp://127.0.0.1:1 failed: Connection refused" });
    assert_eq!(LogLine::parse("    Last message repeated 1 times").message, "    Last message repeated 1 times");
}

#[test]
fn constant_rate_clip_is_probed_and_decoded_frame_by_frame() {
    let scratch = Scratch::new("cfr");
    let clip = scratch.make("cfr.mp4", &pattern("160x120", 30, 30));
    let info = probe(path_str(&clip)).unwrap();
    assert_eq!((info.width, info.height, info.frame_count, info.live), (160, 120, Some(30), false));
    assert!((info.frame_rate.unwrap() - 30.0).abs() < 1e-9 && (info.duration_s.unwrap() - 1.0).abs() < 1e-3, "{info:?}");
    assert!(info.audio.is_none() && info.video_codec == "h264");

    let mut decoder = Decoder::open(&info).unwrap();
    let frames = decoder.by_ref().collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(decoder.dropped(), 0);
    assert_eq!(frames.iter().map(|frame| frame.index).collect::<Vec<_>>(), (0..30).collect::<Vec<_>>());
    assert_times_match(&frames.iter().map(|frame| frame.time_s).collect::<Vec<_>>(), &(0..30).map(|n| f64::from(n) / 30.0).collect::<Vec<_>>());
    assert_eq!(frames[0].rgb.dimensions(), (160, 120));
    // The test pattern is colourful: a frame of zeros or of one grey would mean a broken read.
    let first = frames[0].rgb.as_raw();
    assert!(first.iter().any(|&byte| byte > 200) && first.chunks(3).any(|pixel| pixel[0] != pixel[1]));
}

#[test]
fn variable_rate_times_survive_decoding_and_encoding() {
    let scratch = Scratch::new("vfr");
    // From 60 fps, the first 10 frames and then every third: 1/60 s apart, then 1/20 s.
    let mut args = pattern("160x120", 60, 30);
    args.extend(["-vf", "select=lt(n\\,10)+not(mod(n\\,3))", "-fps_mode", "vfr"].map(String::from));
    let clip = scratch.make("vfr.mp4", &args);
    let expected = ffprobe_frame_times(&clip);
    assert_eq!(expected.len(), 30);
    assert!((expected[1] - expected[0] - 1.0 / 60.0).abs() < 1e-3 && (expected[29] - expected[28] - 1.0 / 20.0).abs() < 1e-3, "not variable: {expected:?}");

    let info = probe(path_str(&clip)).unwrap();
    let frames = decode_all(&info);
    assert_times_match(&frames.iter().map(|frame| frame.time_s).collect::<Vec<_>>(), &expected);

    let output = scratch.path("out.mp4");
    let mut encoder = Encoder::create(&output, &info, Preset::default()).unwrap();
    for frame in frames.iter().cloned() {
        encoder.write_frame(frame).unwrap();
    }
    encoder.finish().unwrap();
    assert_times_match(&ffprobe_frame_times(&output), &expected);
    assert_eq!(ffprobe_streams(&output), ["video h264"]);
    let colour = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=color_space", "-of", "csv=p=0"]).arg(&output).output().unwrap();
    assert_eq!(String::from_utf8(colour.stdout).unwrap().trim(), "bt709");

    // The pixels come back, less what H.264 loses: a swap of channels or rows would not.
    let encoded = decode_all(&probe(path_str(&output)).unwrap());
    for (original, encoded) in frames.iter().zip(&encoded) {
        assert!(mean_difference(&original.rgb, &encoded.rgb) < 8.0, "frame {} differs", original.index);
    }
}

#[test]
fn odd_size_is_padded_by_a_black_column_and_row() {
    let scratch = Scratch::new("odd");
    // testsrc, as testsrc2 rounds sizes to even, and 4:4:4, as 4:2:0 cannot hold odd sizes.
    let clip = scratch.make("odd.mp4", &["-f", "lavfi", "-i", "testsrc=size=641x479:rate=30", "-frames:v", "5", "-c:v", "libx264", "-pix_fmt", "yuv444p"]);
    let info = probe(path_str(&clip)).unwrap();
    assert_eq!((info.width, info.height), (641, 479));
    let frames = decode_all(&info);
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0].rgb.dimensions(), (641, 479));

    let output = scratch.path("out.mp4");
    let mut encoder = Encoder::create(&output, &info, Preset::default()).unwrap();
    for frame in frames.iter().cloned() {
        encoder.write_frame(frame).unwrap();
    }
    encoder.finish().unwrap();
    let encoded_info = probe(path_str(&output)).unwrap();
    assert_eq!((encoded_info.width, encoded_info.height), (642, 480));
    let encoded = decode_all(&encoded_info);
    assert_eq!(encoded.len(), 5);
    assert!(mean_difference(&frames[0].rgb, &encoded[0].rgb) < 8.0, "the picture moved or changed");
    let padding_brightness = (0..480).map(|y| u32::from(encoded[0].rgb.get_pixel(641, y).0[1])).max().unwrap();
    assert!(padding_brightness < 40, "the added column is not black: {padding_brightness}");
}

#[test]
fn audio_is_copied_or_reencoded_into_the_output() {
    let scratch = Scratch::new("audio");
    for (name, audio_codec, expected) in [("aac.mp4", "aac", "audio aac"), ("pcm.mkv", "pcm_s16le", "audio aac"), ("mp3.mkv", "libmp3lame", "audio mp3")] {
        let args = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-f", "lavfi", "-i", "sine=duration=0.5", "-frames:v", "15", "-c:v", "libx264", "-c:a", audio_codec];
        let clip = scratch.make(name, &args);
        let info = probe(path_str(&clip)).unwrap();
        assert!(info.audio.is_some(), "{name}: no audio found");

        let output = scratch.path(&format!("{name}.out.mp4"));
        let mut encoder = Encoder::create(&output, &info, Preset::default()).unwrap();
        for frame in Decoder::open(&info).unwrap() {
            encoder.write_frame(frame.unwrap()).unwrap();
        }
        encoder.finish().unwrap();
        assert_eq!(ffprobe_streams(&output), ["video h264", expected], "{name}");
        assert_eq!(ffprobe_frame_times(&output).len(), 15, "{name}");
    }
}

#[test]
fn rotated_clip_is_reported_and_decoded_as_displayed() {
    let scratch = Scratch::new("rotated");
    let clip = scratch.make("upright.mp4", &pattern("160x120", 30, 3));
    let rotated = scratch.make("rotated.mp4", &["-i", path_str(&clip), "-c", "copy", "-metadata:s:v:0", "rotate=90"]);
    let info = probe(path_str(&rotated)).unwrap();
    assert_eq!((info.width, info.height), (120, 160));
    let frames = decode_all(&info);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].rgb.dimensions(), (120, 160));
    // Turned, not scaled: the upright picture a quarter turn round (this test need not know
    // which way FFmpeg reads the display matrix).
    let upright = &decode_all(&probe(path_str(&clip)).unwrap())[0].rgb;
    let turns = [image::imageops::rotate90(upright), image::imageops::rotate270(upright)];
    assert!(turns.iter().any(|turned| mean_difference(turned, &frames[0].rgb) < 1.0), "the frame is not the upright one turned");
}

#[test]
fn truncated_file_gives_its_frames_then_an_error() {
    let scratch = Scratch::new("truncated");
    let mut args = pattern("160x120", 30, 30);
    // The index at the front, so that the first half of the file is still a readable file.
    args.extend(["-movflags", "+faststart"].map(String::from));
    let clip = scratch.make("whole.mp4", &args);
    let bytes = std::fs::read(&clip).unwrap();
    let truncated = scratch.path("truncated.mp4");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let info = probe(path_str(&truncated)).unwrap();
    let results: Vec<Result<Frame>> = Decoder::open(&info).unwrap().collect();
    let (last, frames) = results.split_last().unwrap();
    assert!(!frames.is_empty() && frames.len() < 30 && frames.iter().all(Result::is_ok), "{} frames", frames.len());
    let message = last.as_ref().expect_err("the damage is reported").to_string();
    assert!(message.contains("truncated.mp4") && message.contains("ffmpeg said"), "{message}");
}

#[test]
fn files_without_video_are_refused() {
    let scratch = Scratch::new("novideo");
    let audio = scratch.make("audio.m4a", &["-f", "lavfi", "-i", "sine=duration=0.2"]);
    let message = error_text(probe(path_str(&audio)));
    assert!(message.contains("audio.m4a") && message.contains("no video stream"), "{message}");

    let empty = scratch.path("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let message = error_text(probe(path_str(&empty)));
    assert!(message.contains("empty.mp4") && message.contains("cannot be read as video"), "{message}");

    let message = error_text(probe(path_str(&scratch.path("missing.mp4"))));
    assert!(message.contains("missing.mp4") && message.contains("cannot read it"), "{message}");
}

#[test]
fn video_stream_without_frames_gives_an_error() {
    let scratch = Scratch::new("zeroframes");
    // An AVI keeps a video stream header even when no frame follows.
    let clip = scratch.make("zero.avi", &["-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "0"]);
    let info = probe(path_str(&clip)).unwrap();
    let results: Vec<Result<Frame>> = Decoder::open(&info).unwrap().collect();
    assert_eq!(results.len(), 1);
    let message = error_text(results.into_iter().next().unwrap());
    assert!(message.contains("zero.avi") && message.contains("after 0 frames"), "{message}");
}

#[test]
fn unknown_codec_is_refused() {
    let scratch = Scratch::new("unknowncodec");
    let clip = scratch.make("known.mkv", &pattern("160x120", 30, 3));
    // Renames the codec in the Matroska track header to one no FFmpeg knows.
    let bytes = std::fs::read(&clip).unwrap();
    let (known, unknown) = (b"V_MPEG4/ISO/AVC", b"V_MIEN/UNKNOWN!");
    let at = bytes.windows(known.len()).position(|window| window == known).unwrap();
    let mut renamed = bytes.clone();
    renamed[at..at + known.len()].copy_from_slice(unknown);
    let unknown_clip = scratch.path("unknown.mkv");
    std::fs::write(&unknown_clip, renamed).unwrap();
    let message = error_text(probe(path_str(&unknown_clip)));
    assert!(message.contains("unknown.mkv") && message.contains("codec is unknown"), "{message}");
}

#[test]
fn refused_connection_fails_fast() {
    let started = Instant::now();
    // A live source is opened by the decoder alone, so the refusal comes from there.
    let mut decoder = Decoder::open(&probe("tcp://127.0.0.1:1").unwrap()).unwrap();
    let message = error_text(decoder.next().expect("an error, not a silent end"));
    assert!(message.contains("tcp://127.0.0.1:1") && message.contains("Connection refused"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn live_source_drops_frames_when_the_consumer_is_slow() {
    // A live stream: ffmpeg makes the test pattern as fast as it can and this test serves it
    // over TCP to the decoder, which connects as to any tcp:// source.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let mut generator = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-frames:v", "100000"])
        .args(["-c:v", "rawvideo", "-pix_fmt", "rgb24", "-f", "nut", "pipe:1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = generator.stdout.take().unwrap();
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        // Ends with an error once the decoder hangs up.
        let _ = std::io::copy(&mut stream, &mut connection);
    });

    // Probed as a live source: the size comes with the frames.
    let mut decoder = Decoder::open(&probe(&url).unwrap()).unwrap();
    let mut indices = Vec::new();
    for _ in 0..6 {
        let frame = decoder.next().unwrap().unwrap();
        assert_eq!(frame.rgb.dimensions(), (160, 120));
        indices.push(frame.index);
        std::thread::sleep(Duration::from_millis(40));
    }
    let dropped = decoder.dropped();
    decoder.stop();
    assert!(decoder.next().is_none(), "a stopped decoder ends without an error");
    let _ = generator.kill();
    let _ = generator.wait();
    server.join().unwrap();
    assert!(dropped > 0, "no frame dropped");
    assert!(indices.windows(2).all(|pair| pair[1] > pair[0]) && indices.windows(2).any(|pair| pair[1] > pair[0] + 1), "{indices:?}");
}

#[test]
fn times_count_from_the_file_start_and_the_audio_stays_in_step() {
    let scratch = Scratch::new("mpegts");
    // MPEG-TS starts its clock at 1.4 s, and its audio starts a little before its video.
    let args = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-f", "lavfi", "-i", "sine=duration=0.5", "-frames:v", "15", "-c:v", "libx264", "-c:a", "aac"];
    let clip = scratch.make("clip.ts", &args);
    let info = probe(path_str(&clip)).unwrap();
    assert!(info.start_time_s > 1.0, "{info:?}");
    let expected: Vec<f64> = ffprobe_frame_times(&clip).iter().map(|time| time - info.start_time_s).collect();
    assert!(expected[0] > 0.01, "the video starts with the audio: {expected:?}");
    let frames = decode_all(&info);
    assert_times_match(&frames.iter().map(|frame| frame.time_s).collect::<Vec<_>>(), &expected);

    let output = scratch.path("out.mp4");
    let mut encoder = Encoder::create(&output, &info, Preset::default()).unwrap();
    for frame in frames {
        encoder.write_frame(frame).unwrap();
    }
    encoder.finish().unwrap();
    assert_times_match(&ffprobe_frame_times(&output), &expected);
    let audio_start = Command::new("ffprobe").args(["-v", "error", "-select_streams", "a:0", "-show_entries", "stream=start_time", "-of", "csv=p=0"]).arg(&output).output().unwrap();
    let audio_start: f64 = String::from_utf8(audio_start.stdout).unwrap().trim().parse().unwrap();
    assert!(audio_start.abs() < 1e-3, "the audio starts at {audio_start} s");
}
