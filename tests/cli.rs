//! The `mien` command as a user runs it: detection end to end and its handling of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn mien(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mien")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mien-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn detect_finds_the_face_in_a_shipped_photo_and_writes_png_and_json() {
    let out = temp_dir("photo");
    let json = out.join("faces.json");
    let (ok, stdout, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "data/photos/grace_hopper.jpg", "--out", s(&out), "--json", s(&json)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 face(s)"), "{stdout}");
    assert!(out.join("grace_hopper.png").exists());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((report[0]["width"].as_u64(), report[0]["height"].as_u64()), (Some(512), Some(600)));
    assert_eq!(report[0]["faces"].as_array().unwrap().len(), 1);
}

#[test]
fn detect_handles_bad_and_odd_inputs() {
    let dir = temp_dir("inputs");
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    image::GrayImage::from_pixel(16, 12, image::Luma([7])).save(dir.join("tiny.png")).unwrap();
    std::fs::write(dir.join("broken.png"), &std::fs::read("data/photos/astronaut.png").unwrap()[..2000]).unwrap();
    let out = temp_dir("inputs-out");

    // In a folder, what is not a readable image is skipped with a warning; a tiny image has no faces.
    let (ok, stdout, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", s(&dir), "--out", s(&out)]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("skipping") && stderr.contains("notes.txt") && stderr.contains("broken.png"), "{stderr}");
    assert!(stdout.contains("tiny.png: 0 face(s)"), "{stdout}");

    // Named directly, a broken image is an error naming it; so is a missing file.
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", s(&dir.join("broken.png")), "--out", s(&out)]);
    assert!(!ok && stderr.contains("broken.png: cannot read the image"), "{stderr}");
    let (ok, _, stderr) = mien(&["detect", "--no-emotion", "no/such.jpg"]);
    assert!(!ok && stderr.contains("no/such.jpg: no such file or folder"), "{stderr}");

    // A malformed cascade names the file and the problem.
    std::fs::write(dir.join("bad.xml"), "<opencv_storage><cascade><stageType>BOOST").unwrap();
    let (ok, _, stderr) = mien(&["detect", "--no-emotion", "--cascade", s(&dir.join("bad.xml")), "data/photos/astronaut.png"]);
    assert!(!ok && stderr.contains("bad.xml") && stderr.contains("not well-formed XML"), "{stderr}");
}

#[test]
fn gpu_detection_gives_the_cpu_faces_and_labels() {
    // The whole main job on the GPU path (lavapipe in CI): cascade kernels, then the model.
    let out = temp_dir("gpu");
    let run = |device: &str, extra: &[&str]| {
        let json = out.join(format!("{device}{}.json", extra.len()));
        let mut args = vec!["--device", device, "detect", "data/photos/grace_hopper.jpg", "data/photos/astronaut.png", "--out", s(&out), "--json", s(&json)];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = mien(&args);
        assert!(ok, "{device}: {stderr}");
        (serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&json).unwrap()).unwrap(), stderr)
    };
    let (cpu, _) = run("cpu", &[]);
    let (gpu, _) = run("gpu", &[]);
    for (c, g) in cpu.as_array().unwrap().iter().zip(gpu.as_array().unwrap()) {
        let (cf, gf) = (c["faces"].as_array().unwrap(), g["faces"].as_array().unwrap());
        assert!(!cf.is_empty() && cf.len() == gf.len(), "{c}\n{g}");
        for (a, b) in cf.iter().zip(gf) {
            for key in ["x", "y", "w", "h", "emotion"] {
                assert_eq!(a[key], b[key], "{key}");
            }
            for (class, p) in a["probabilities"].as_object().unwrap() {
                assert!((p.as_f64().unwrap() - b["probabilities"][class].as_f64().unwrap()).abs() < 1e-4, "{class}");
            }
        }
    }
    // An image whose pyramid does not fit the device's buffers falls back to the CPU, with a
    // warning naming the file, and still finds the same faces.
    let (small, stderr) = run("gpu", &["--max-binding", "300000", "--no-emotion"]);
    assert!(stderr.contains("grace_hopper.jpg") && stderr.contains("detecting on the CPU"), "{stderr}");
    for key in ["x", "y", "w", "h"] {
        assert_eq!(small[0]["faces"][0][key], gpu[0]["faces"][0][key]);
    }
}

#[test]
fn train_rejects_an_augmentation_range_out_of_bounds_before_reading_data() {
    let (ok, _, stderr) = mien(&["train", "--device", "cpu", "--zoom", "1.5", "--data", "no/such/folder"]);
    assert!(!ok && stderr.contains("--zoom must be in [0, 0.99], got 1.5"), "{stderr}");
}

#[test]
fn profile_train_writes_a_trace_and_prints_gpu_and_host_costs() {
    let dir = temp_dir("profile");
    let trace = dir.join("trace.json");
    let (ok, stdout, stderr) = mien(&["profile", "train", "--device", "gpu", "--steps", "2", "--batch", "3", "--trace", s(&trace)]);
    assert!(ok, "{stderr}");
    // The data gradients run the forward kernel but are named apart.
    for expected in ["ms GPU time per step", "host per step:", "conv2d_forward", "conv2d_data_grad"] {
        assert!(stdout.contains(expected), "no {expected:?} in {stdout}");
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    assert!(events.iter().any(|e| e["name"] == "conv2d_filter_grad" && e["dur"].as_f64().unwrap() > 0.0));
    assert!(doc["otherData"]["host_record_ms_per_step"].as_f64().unwrap() > 0.0);
}

#[test]
fn profile_infer_times_each_pass_of_a_call_with_the_weights_kept_packed() {
    let dir = temp_dir("profile-infer");
    let trace = dir.join("trace.json");
    let (ok, stdout, stderr) = mien(&["profile", "infer", "--device", "gpu", "--calls", "2", "--trace", s(&trace)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ms GPU time per call") && stdout.contains("conv2d_forward"), "{stdout}");
    // The warm-up call packed the convolution weights; the profiled calls reuse them.
    assert!(!stdout.contains("conv2d_pack"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert_eq!(doc["otherData"]["calls"], 2);
    assert_eq!(doc["otherData"]["batch"], 1);
    let (ok, _, stderr) = mien(&["profile", "infer", "--batch", "0"]);
    assert!(!ok && stderr.contains("--batch"), "{stderr}");
}

#[test]
fn bench_kernels_reports_rates_peaks_and_each_pass() {
    let (ok, stdout, stderr) = mien(&["bench", "kernels", "--device", "gpu", "--filter", "dense2", "--reps", "1", "--batch", "1,5", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["sgemm_gflops"].as_f64().unwrap() > 0.0 && report["copy_gbps"].as_f64().unwrap() > 0.0);
    // The peak: multiply-adds with no memory traffic outrun any product.
    assert!(report["fma_gflops"].as_f64().unwrap() > report["sgemm_gflops"].as_f64().unwrap(), "{stdout}");
    // dense2's three products, and the plain SGEMM at dense2's shape beside them, at each batch.
    let results = report["results"].as_array().unwrap();
    let batches: Vec<u64> = results.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 1, 1, 1, 5, 5, 5, 5], "{stdout}");
    for r in results {
        assert!(r["gpu_ms"].as_f64().unwrap() > 0.0 && r["cpu_ms"].as_f64().unwrap() > 0.0);
        // A batch-1 product is a matrix-vector one, bound by memory: its yardstick is the copy.
        let by_copy = r["batch"] == 1 && !r["kernel"].as_str().unwrap().starts_with("plain SGEMM");
        for key in if by_copy { ["gpu_percent_of_copy"].as_slice() } else { &["gpu_percent_of_sgemm", "gpu_percent_of_fma"] } {
            assert!(r[key].as_f64().is_some(), "{key}: {r}");
        }
        // dense2's products run split-K: the product and the sum of its splits at least.
        let passes = r["gpu_passes"].as_array().unwrap();
        let pass = if r["kernel"].as_str().unwrap().starts_with("plain SGEMM") { "sgemm_calibration" } else { "dense" };
        assert!(passes.iter().any(|p| p["pass"] == pass), "{r}");
    }
    let (ok, _, stderr) = mien(&["bench", "kernels", "--batch", "64,0"]);
    assert!(!ok && stderr.contains("--batch"), "{stderr}");
}

#[test]
fn profile_detect_times_each_gpu_pass_of_a_frame() {
    let dir = temp_dir("profile-detect");
    let trace = dir.join("trace.json");
    let (ok, stdout, stderr) = mien(&["profile", "detect", "--device", "gpu", "--frames", "2", "--size", "320x240", "--trace", s(&trace)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ms GPU time per frame") && stdout.contains("host per frame:") && stdout.contains("haar stage 0"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(doc["traceEvents"].as_array().unwrap().iter().any(|e| e["name"] == "resize"));
    assert_eq!(doc["otherData"]["frames"], 2);
    let (ok, _, stderr) = mien(&["profile", "detect", "--size", "320by240"]);
    assert!(!ok && stderr.contains("WIDTHxHEIGHT"), "{stderr}");
}
