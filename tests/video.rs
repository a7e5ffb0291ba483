//! `mien detect` on videos and live streams, as a user runs it: clips made at test time with
//! ffmpeg from the shipped photos (a pan, a cut between photos, an odd size, a variable frame
//! rate, audio), a clip served live over TCP, and broken inputs.

mod common;

use common::{mien, mien_command, s, temp_dir};
use mien::pipeline::SHIPPED_WEIGHTS;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-hide_banner", "-loglevel", "error", "-y"]).args(args).output().expect("the video tests need ffmpeg (tools/test.sh installs it)");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn photo(name: &str) -> String {
    format!("{}/data/photos/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `frames` frames at 10 fps of a 320x240 window panning across Grace Hopper's photo, scaled
/// so that her face stays in view and moves by about 6 px a frame.
fn pan_clip(dir: &Path, frames: u32) -> PathBuf {
    let clip = dir.join("pan.mp4");
    let seconds = (frames as f32 / 10.0).to_string();
    ffmpeg(&["-loop", "1", "-i", &photo("grace_hopper.jpg"), "-vf", "scale=448:525,crop=320:240:'40+60*t':'60+20*t',format=yuv420p", "-r", "10", "-t", &seconds, "-c:v", "libx264", s(&clip)]);
    clip
}

/// The CSV's rows as maps from column to value.
fn rows(csv: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect()).collect()
}

/// Frames in a video file, counted by decoding it.
fn frame_count(video: &Path) -> u64 {
    let out = Command::new("ffprobe").args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", s(video)]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_panning_clip_gives_the_four_outputs_with_one_stable_track() {
    let dir = temp_dir("video-pan");
    let clip = pan_clip(&dir, 12);
    let out = dir.join("out");
    let (ok, stdout, stderr) = mien(&["--device", "cpu", "detect", s(&clip), "--out", s(&out), "--jsonl"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("12 frames"), "{stdout}");
    let rows = rows(&out.join("pan.faces.csv"));
    assert_eq!(rows.len(), 12, "one face in each of 12 frames");
    assert!(rows.iter().all(|r| r["track"] == "1"), "the face keeps track 1 through the pan");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["frame"], i.to_string());
        assert!((r["time_s"].parse::<f64>().unwrap() - i as f64 / 10.0).abs() < 1e-3, "time of frame {i}: {}", r["time_s"]);
        let total: f64 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"].iter().map(|c| r[*c].parse::<f64>().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-3, "probabilities sum to {total}");
    }
    // The face moves right and down with the window moving left and up... by the pan's speed.
    let x: Vec<i32> = rows.iter().map(|r| r["x"].parse().unwrap()).collect();
    assert!(x[0] - x[11] > 40, "the face moves against the pan: {x:?}");
    assert_eq!(frame_count(&out.join("pan.annotated.mp4")), 12, "every frame in the annotated video");
    assert_eq!(std::fs::read_to_string(out.join("pan.faces.jsonl")).unwrap().lines().count(), 12);
    let summary = summary(&out.join("pan.summary.json"));
    assert_eq!(summary["frames"], 12);
    assert_eq!(summary["tracks"].as_array().unwrap().len(), 1);
    assert_eq!(summary["tracks"][0]["frames"], 12);
    assert!((summary["tracks"][0]["last_s"].as_f64().unwrap() - 1.1).abs() < 1e-3);
    assert!(image::open(out.join("pan.timeline.png")).is_ok());
}

#[test]
fn videos_take_one_view_of_the_first_model_and_images_two_views_of_every_model_unless_told() {
    let dir = temp_dir("video-tta");
    let clip = pan_clip(&dir, 4);
    let (defaults, single, first) = (dir.join("defaults"), dir.join("single"), dir.join("first"));
    let grace = photo("grace_hopper.jpg");
    let first_model = format!("{}/{}", env!("CARGO_MANIFEST_DIR"), SHIPPED_WEIGHTS[0]);
    for (out, more) in [(&defaults, &[][..]), (&single, &["--tta", "none"][..]), (&first, &["--weights", &first_model][..])] {
        let (ok, _, stderr) = mien(&[&["--device", "cpu", "detect", &grace, s(&clip), "--out", s(out), "--json", s(&out.join("faces.json"))][..], more].concat());
        assert!(ok, "{stderr}");
    }
    let csv = |dir: &Path| std::fs::read(dir.join("pan.faces.csv")).unwrap();
    assert_eq!(csv(&defaults), csv(&single), "the video's faces are labelled from their crops alone");
    assert_eq!(csv(&defaults), csv(&first), "the video's faces are labelled by the first default model alone");
    let probabilities = |dir: &Path| summary(&dir.join("faces.json"))[0]["faces"][0]["probabilities"].clone();
    assert_ne!(probabilities(&defaults), probabilities(&single), "the image's face is labelled with its mirror image too");
    if SHIPPED_WEIGHTS.len() > 1 {
        assert_ne!(probabilities(&defaults), probabilities(&first), "the image's face is labelled by every default model");
    }
}

#[test]
fn a_cut_between_photos_starts_a_new_track_and_the_summary_matches_the_csv() {
    let dir = temp_dir("video-cut");
    let clip = dir.join("cut.mkv");
    // Five frames of each photo at 5 fps, cut hard from one to the other.
    ffmpeg(&[
        "-loop",
        "1",
        "-t",
        "1",
        "-i",
        &photo("grace_hopper.jpg"),
        "-loop",
        "1",
        "-t",
        "1",
        "-i",
        &photo("astronaut.png"),
        "-filter_complex",
        "[0:v]scale=320:375,crop=320:240:0:40,setsar=1,fps=5,trim=end_frame=5[a];[1:v]scale=320:320,crop=320:240:0:0,setsar=1,fps=5,trim=end_frame=5[b];[a][b]concat=n=2:v=1,format=yuv420p[v]",
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        s(&clip),
    ]);
    let out = dir.join("out");
    let (ok, _, stderr) = mien(&["--device", "cpu", "detect", s(&clip), "--out", s(&out), "--stride", "2"]);
    assert!(ok, "{stderr}");
    let rows = rows(&out.join("cut.faces.csv"));
    let tracks: Vec<&str> = rows.iter().map(|r| r["track"].as_str()).collect();
    assert_eq!(rows.len(), 10, "one face a frame: {tracks:?}");
    // Frame 5, the first after the cut, is not analysed and carries frame 4's face.
    assert!(tracks[..6].iter().all(|t| *t == "1") && tracks[6..].iter().all(|t| *t == "2"), "a new track after the cut: {tracks:?}");
    // Every second frame is analysed, the others carry its faces.
    assert!(rows.iter().enumerate().all(|(i, r)| r["analysed"] == if i % 2 == 0 { "1" } else { "0" }));
    let summary = summary(&out.join("cut.summary.json"));
    assert_eq!(summary["analysed_frames"], 5);
    for track in summary["tracks"].as_array().unwrap() {
        let id = track["track"].to_string();
        let mine: Vec<_> = rows.iter().filter(|r| r["track"] == id).collect();
        assert_eq!(track["frames"], mine.len() as u64, "track {id}");
        assert_eq!(track["first_s"].as_f64().unwrap(), mine[0]["time_s"].parse::<f64>().unwrap());
        let share: f64 = track["dominant_share"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-9);
    }
}

#[test]
fn odd_sizes_variable_frame_rates_and_audio_come_through() {
    let dir = temp_dir("video-vfr");
    let clip = dir.join("odd.mkv");
    // 641x479 (Motion JPEG: H.264 needs even sizes), frames at uneven times, with a sine tone.
    ffmpeg(&[
        "-loop",
        "1",
        "-i",
        &photo("astronaut.png"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:duration=2",
        "-vf",
        "scale=641:479,setpts='(N*0.1+0.1*floor(N/2))/TB',format=yuv420p",
        "-frames:v",
        "8",
        "-fps_mode",
        "vfr",
        "-c:v",
        "mjpeg",
        "-c:a",
        "aac",
        "-shortest",
        s(&clip),
    ]);
    let out = dir.join("out");
    // Any x264 preset writes the same frames at the same times.
    let (ok, _, stderr) = mien(&["--device", "cpu", "detect", s(&clip), "--out", s(&out), "--no-emotion", "--x264-preset", "ultrafast"]);
    assert!(ok, "{stderr}");
    let times: Vec<f64> = rows(&out.join("odd.faces.csv")).iter().map(|r| r["time_s"].parse().unwrap()).collect();
    // The times ffprobe gives the clip's frames (its format starts at 0).
    let probe = Command::new("ffprobe").args(["-v", "error", "-select_streams", "v", "-show_entries", "frame=pts_time", "-of", "csv=p=0", s(&clip)]).output().unwrap();
    let want: Vec<f64> = String::from_utf8_lossy(&probe.stdout).split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
    assert_eq!(times.len(), 8, "{times:?}");
    assert!(times.iter().zip(&want).all(|(t, w)| (t - w).abs() < 1e-3), "frame times {times:?}, ffprobe {want:?}");
    let steps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.iter().any(|d| *d > 0.15) && steps.iter().any(|d| *d < 0.11), "uneven steps expected: {steps:?}");
    let annotated = out.join("odd.annotated.mp4");
    let probe = Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=codec_type,width,height", "-of", "csv=p=0", s(&annotated)]).output().unwrap();
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(streams.contains("video,642,480") && streams.contains("audio"), "{streams}");
    assert_eq!(frame_count(&annotated), 8);
}

/// The ffmpeg serving a live stream, stopped when dropped: a test that fails leaves no server
/// running (nor holding the test runner's output open).
struct LiveServer(Child);

impl Drop for LiveServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An ffmpeg serving `clip` at its own pace as MPEG-TS on a local TCP port, once (looped for
/// ever when `endless`), listening by the time this returns; with the stem of mien's outputs
/// for its URL.
fn serve_live(clip: &Path, endless: bool) -> (LiveServer, String, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut args = vec!["-hide_banner", "-loglevel", "error", "-re"];
    if endless {
        args.extend(["-stream_loop", "-1"]);
    }
    let listen = format!("{url}?listen=1");
    args.extend(["-i", s(clip), "-c", "copy", "-f", "mpegts", &listen]);
    let server = LiveServer(Command::new("ffmpeg").args(&args).spawn().unwrap());
    // The server takes one connection, so a probe connection would use it up: wait until the
    // kernel lists the port as listening (state 0A in /proc/net/tcp).
    let listening = format!(":{port:04X} 00000000:0000 0A");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/net/tcp").unwrap().contains(&listening) {
        assert!(started.elapsed().as_secs() < 20, "the ffmpeg server never listened on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, url, format!("tcp___127.0.0.1_{port}"))
}

#[test]
fn a_live_tcp_stream_is_read_to_its_end() {
    let dir = temp_dir("video-live");
    let clip = pan_clip(&dir, 10);
    let (mut server, url, stem) = serve_live(&clip, false);
    let out = dir.join("out");
    let (ok, stdout, stderr) = mien(&["--device", "cpu", "detect", &url, "--out", s(&out), "--no-emotion"]);
    let _ = server.0.wait();
    assert!(ok, "{stderr}");
    let rows = rows(&out.join(format!("{stem}.faces.csv")));
    let summary = summary(&out.join(format!("{stem}.summary.json")));
    let (frames, dropped) = (summary["frames"].as_u64().unwrap(), summary["dropped_frames"].as_u64().unwrap());
    assert_eq!(frames + dropped, 10, "every frame read or counted as dropped: {stdout}");
    assert_eq!(rows.len() as u64, frames);
}

#[test]
fn broken_and_missing_videos_are_clear_errors_and_leave_valid_outputs() {
    let dir = temp_dir("video-bad");
    let clip = pan_clip(&dir, 20);
    // Truncated: the first half of a file whose frames are all key frames (Motion JPEG), so
    // that the damage falls mid-way. The frames before it are done.
    let bytes = std::fs::read(&clip).unwrap();
    let truncated = dir.join("truncated.mkv");
    ffmpeg(&["-i", s(&clip), "-c:v", "mjpeg", s(&truncated)]);
    let mkv = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &mkv[..mkv.len() / 2]).unwrap();
    let out = dir.join("out");
    let (ok, _, stderr) = mien(&["--device", "cpu", "detect", s(&truncated), "--out", s(&out), "--no-emotion"]);
    assert!(!ok && stderr.contains("truncated.mkv"), "{stderr}");
    let done = rows(&out.join("truncated.faces.csv")).len() as u64;
    assert!(done > 0 && done < 20, "{done} frames done");
    assert_eq!(frame_count(&out.join("truncated.annotated.mp4")), done, "the annotated video holds the frames done");
    assert_eq!(summary(&out.join("truncated.summary.json"))["frames"], done);

    // No video stream, no frames at all, not a video, a refused connection.
    let audio = dir.join("tone.mp4");
    ffmpeg(&["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", s(&audio)]);
    let empty = dir.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let garbage = dir.join("garbage.avi");
    std::fs::write(&garbage, &bytes[bytes.len() / 2..]).unwrap();
    let refused = "tcp://127.0.0.1:1";
    for (input, expected) in [(s(&audio), "no video"), (s(&empty), "empty.mp4"), (s(&garbage), "garbage.avi"), (refused, "127.0.0.1:1")] {
        let started = std::time::Instant::now();
        let (ok, _, stderr) = mien(&["--device", "cpu", "detect", input, "--out", s(&out), "--no-emotion"]);
        assert!(!ok && stderr.contains(expected), "{input}: {stderr}");
        assert!(started.elapsed().as_secs() < 30, "{input}: took {:?}", started.elapsed());
    }
    // A bad input among good ones: the others are still done.
    let (ok, stdout, stderr) = mien(&["--device", "cpu", "detect", s(&empty), s(&clip), "--out", s(&out), "--no-emotion", "--stride", "5"]);
    assert!(!ok && stderr.contains("1 of 2 inputs failed") && stdout.contains("pan.mp4"), "{stdout}\n{stderr}");
    // Settings that make no sense are refused before any work.
    for (flag, value) in [("--stride", "0"), ("--smooth", "-1")] {
        let (ok, _, stderr) = mien(&["--device", "cpu", "detect", s(&clip), "--out", s(&out), &format!("{flag}={value}")]);
        assert!(!ok && stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

/// Starts `mien detect` on a live stream in the background, what it prints kept for [`wait_for_rows`].
fn start_live_detect(url: &str, out: &Path) -> Child {
    mien_command(&["--device", "cpu", "detect", url, "--out", s(out), "--no-emotion"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits until a run's table (flushed frame by frame) has `rows` rows: what mien has done, not
/// how long it had, decides when the tests below stop it, however loaded the machine. Should
/// mien end first, or not get there in two minutes, fails with what mien printed.
fn wait_for_rows(mien: &mut Child, csv: &Path, rows: usize) {
    let started = std::time::Instant::now();
    let written = || std::fs::read_to_string(csv).map_or(0, |text| text.lines().count().saturating_sub(1));
    while written() < rows {
        let ended = mien.try_wait().unwrap();
        let waited = started.elapsed().as_secs_f64();
        if ended.is_some() || waited > 120.0 {
            if ended.is_none() {
                // Stopped as by Ctrl-C, mien says how many frames it had read and dropped.
                interrupt(mien);
                let stopping = std::time::Instant::now();
                while mien.try_wait().unwrap().is_none() && stopping.elapsed().as_secs() < 10 {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                let _ = mien.kill();
            }
            let status = mien.wait().unwrap();
            let mut said = String::new();
            mien.stdout.take().unwrap().read_to_string(&mut said).unwrap();
            mien.stderr.take().unwrap().read_to_string(&mut said).unwrap();
            let how = if ended.is_some() { "mien ended first" } else { "mien was stopped" };
            panic!("{}: {} of {rows} rows after {waited:.1} s; {how} ({status}), saying:\n{said}", csv.display(), written());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// SIGINT to mien alone, as a terminal's Ctrl-C would reach it: the ffmpeg processes it runs
/// are in process groups of their own.
fn interrupt(mien: &Child) {
    Command::new("kill").args(["-INT", &mien.id().to_string()]).status().unwrap();
}

#[test]
fn ctrl_c_on_a_live_stream_finishes_every_output() {
    let dir = temp_dir("video-interrupt");
    let clip = pan_clip(&dir, 10);
    let (server, url, stem) = serve_live(&clip, true);
    let out = dir.join("out");
    let mut mien = start_live_detect(&url, &out);
    // Let it analyse ten frames of the stream, then press Ctrl-C.
    wait_for_rows(&mut mien, &out.join(format!("{stem}.faces.csv")), 10);
    interrupt(&mien);
    let result = mien.wait_with_output().unwrap();
    drop(server);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success() && stderr.contains("interrupted"), "{stderr}");
    let frames = summary(&out.join(format!("{stem}.summary.json")))["frames"].as_u64().unwrap();
    assert!(frames >= 10, "{frames} frames, where the table had 10 rows before the interrupt");
    assert_eq!(rows(&out.join(format!("{stem}.faces.csv"))).len() as u64, frames);
    assert_eq!(frame_count(&out.join(format!("{stem}.annotated.mp4"))), frames, "the annotated video ends cleanly with every frame");
}

#[test]
fn the_gpu_labels_a_video_as_the_cpu_does() {
    let dir = temp_dir("video-gpu");
    let clip = pan_clip(&dir, 8);
    let run = |device: &str| {
        let out = dir.join(device);
        // f32 on the CPU too, the GPU's precision, where the CPU would take bf16 on AMX tiles.
        let (ok, _, stderr) = mien(&["--device", device, "--precision", "f32", "detect", s(&clip), "--out", s(&out), "--stride", "3"]);
        assert!(ok, "{device}: {stderr}");
        rows(&out.join("pan.faces.csv"))
    };
    let (cpu, gpu) = (run("cpu"), run("gpu"));
    assert_eq!(cpu.len(), 8);
    assert_eq!(cpu.len(), gpu.len());
    for (c, g) in cpu.iter().zip(&gpu) {
        for key in ["frame", "track", "x", "y", "w", "h", "label", "analysed"] {
            assert_eq!(c[key], g[key], "{key}");
        }
        for class in ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"] {
            let (a, b): (f64, f64) = (c[class].parse().unwrap(), g[class].parse().unwrap());
            assert!((a - b).abs() < 2e-3, "{class}: {a} vs {b}");
        }
    }
}

#[test]
fn a_killed_run_leaves_a_complete_table_and_a_playable_video() {
    let dir = temp_dir("video-killed");
    let clip = pan_clip(&dir, 10);
    let (server, url, stem) = serve_live(&clip, true);
    let out = dir.join("out");
    let mut mien = start_live_detect(&url, &out);
    wait_for_rows(&mut mien, &out.join(format!("{stem}.faces.csv")), 5);
    mien.kill().unwrap();
    mien.wait().unwrap();
    drop(server);
    // Every row written is whole: the table is flushed frame by frame.
    let text = std::fs::read_to_string(out.join(format!("{stem}.faces.csv"))).unwrap();
    let columns = text.lines().next().unwrap().split(',').count();
    assert!(text.ends_with('\n') && text.lines().all(|l| l.split(',').count() == columns), "{text}");
    let written = text.lines().count() as u64 - 1;
    assert!(written >= 5, "{written} rows, where there were 5 before the kill");
    // The encoder (a process of its own) ends the MP4 when its input closes, with every frame
    // it was given. A row goes to the table before its frame goes to the encoder, and the frames
    // between them die with mien: the one being drawn, the encoder's queue of two and the one
    // being piped.
    let annotated = out.join(format!("{stem}.annotated.mp4"));
    wait_until_no_process_writes(&annotated);
    let playable = frame_count(&annotated);
    assert!(playable > 0 && playable <= written && written - playable <= 4, "{playable} frames play, of {written} in the table");
}

/// Waits until no process has `file` on its command line (a process ended but not yet reaped
/// has none), for a minute at most.
fn wait_until_no_process_writes(file: &Path) {
    let name = file.as_os_str().as_encoded_bytes();
    let named = |pid: std::fs::DirEntry| std::fs::read(pid.path().join("cmdline")).is_ok_and(|line| line.windows(name.len()).any(|w| w == name));
    let started = std::time::Instant::now();
    while std::fs::read_dir("/proc").unwrap().flatten().any(named) {
        assert!(started.elapsed().as_secs() < 60, "{} still open after a minute", file.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
