//! The `mien` command as a user runs it: detection end to end and its handling of bad input.

mod common;

use common::{mien, mien_command, s, temp_dir};
use std::path::{Path, PathBuf};

#[test]
fn detect_finds_the_face_in_a_shipped_photo_and_writes_png_and_json() {
    let out = temp_dir("photo");
    let json = out.join("faces.json");
    let (ok, stdout, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "data/photos/grace_hopper.jpg", "--out", s(&out), "--json", s(&json)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 face(s)"), "{stdout}");
    assert!(out.join("grace_hopper.annotated.png").exists());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((report[0]["width"].as_u64(), report[0]["height"].as_u64()), (Some(512), Some(600)));
    assert_eq!(report[0]["faces"].as_array().unwrap().len(), 1);
    // YuNet, the default detector, scores the face and gives its five landmarks, inside the box.
    let face = &report[0]["faces"][0];
    assert!(face["score"].as_f64().unwrap() > 0.5, "{face}");
    let (x, y, w, h) = (face["x"].as_f64().unwrap(), face["y"].as_f64().unwrap(), face["w"].as_f64().unwrap(), face["h"].as_f64().unwrap());
    let landmarks = face["landmarks"].as_array().unwrap();
    assert_eq!(landmarks.len(), 5);
    for p in landmarks {
        let (px, py) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
        assert!(px > x && px < x + w && py > y && py < y + h, "landmark {p} outside the box {face}");
    }
    // The Haar cascade gives neither.
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "--detector", "haar", "data/photos/grace_hopper.jpg", "--out", s(&out), "--json", s(&json)]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report[0]["faces"][0].get("score").is_none() && report[0]["faces"][0].get("landmarks").is_none());
}

#[test]
fn detect_handles_bad_and_odd_inputs() {
    let dir = temp_dir("inputs");
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    image::GrayImage::from_pixel(16, 12, image::Luma([7])).save(dir.join("tiny.png")).unwrap();
    std::fs::write(dir.join("broken.png"), &std::fs::read("data/photos/astronaut.png").unwrap()[..2000]).unwrap();
    let out = temp_dir("inputs-out");

    // In a folder, what is not an image is skipped with a warning; a broken image fails the
    // run, named, after the others are done; a tiny image has no faces.
    let (ok, stdout, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", s(&dir), "--out", s(&out)]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("skipping") && stderr.contains("notes.txt: not an image"), "{stderr}");
    assert!(stderr.contains("1 of 2 inputs failed") && stderr.contains("broken.png: cannot read the Png header"), "{stderr}");
    assert!(stdout.contains("tiny.png: 0 face(s)"), "{stdout}");

    // Named directly, a broken image is an error naming it; so is a missing file.
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", s(&dir.join("broken.png")), "--out", s(&out)]);
    assert!(!ok && stderr.contains("broken.png: cannot read the Png header") && stderr.contains("1 of 1 inputs failed"), "{stderr}");
    let (ok, _, stderr) = mien(&["detect", "--no-emotion", "no/such.jpg"]);
    assert!(!ok && stderr.contains("no/such.jpg: no such file or folder"), "{stderr}");

    // A malformed cascade names the file and the problem.
    std::fs::write(dir.join("bad.xml"), "<opencv_storage><cascade><stageType>BOOST").unwrap();
    let (ok, _, stderr) = mien(&["detect", "--detector", "haar", "--no-emotion", "--cascade", s(&dir.join("bad.xml")), "data/photos/astronaut.png"]);
    assert!(!ok && stderr.contains("bad.xml") && stderr.contains("not well-formed XML"), "{stderr}");
}

#[test]
fn gpu_detection_gives_the_cpu_faces_and_labels() {
    // The whole main job on the GPU path (lavapipe in CI): cascade kernels, then the model.
    let out = temp_dir("gpu");
    let run = |device: &str, extra: &[&str]| {
        let json = out.join(format!("{device}{}.json", extra.len()));
        // f32 on the CPU too, the GPU's precision, where the CPU would take bf16 on AMX tiles.
        let mut args = vec!["--device", device, "--precision", "f32", "detect", "data/photos/grace_hopper.jpg", "data/photos/astronaut.png", "--out", s(&out), "--json", s(&json)];
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
    // Square crops instead of aligned ones: the same faces, still labelled.
    let (square, _) = run("gpu", &["--no-align"]);
    for (a, b) in cpu.as_array().unwrap().iter().zip(square.as_array().unwrap()) {
        for (fa, fb) in a["faces"].as_array().unwrap().iter().zip(b["faces"].as_array().unwrap()) {
            assert_eq!((&fa["x"], &fa["w"]), (&fb["x"], &fb["w"]));
            assert!(fb["emotion"].is_string());
        }
    }
    // An image whose pyramid does not fit the device's buffers falls back to the CPU, with a
    // warning naming the file, and still finds the same faces.
    let (haar, _) = run("gpu", &["--no-emotion", "--detector", "haar"]);
    let (small, stderr) = run("gpu", &["--max-binding", "300000", "--no-emotion", "--detector", "haar"]);
    assert!(stderr.contains("grace_hopper.jpg") && stderr.contains("detecting on the CPU"), "{stderr}");
    for key in ["x", "y", "w", "h"] {
        assert_eq!(small[0]["faces"][0][key], haar[0]["faces"][0][key]);
    }
}

#[test]
fn train_rejects_an_augmentation_range_out_of_bounds_before_reading_data() {
    let (ok, _, stderr) = mien(&["train", "--device", "cpu", "--zoom", "1.5", "--data", "no/such/folder"]);
    assert!(!ok && stderr.contains("--zoom must be in [0, 0.99], got 1.5"), "{stderr}");
    let (ok, _, stderr) = mien(&["train", "--device", "cpu", "--erase", "1.5", "--data", "no/such/folder"]);
    assert!(!ok && stderr.contains("--erase must be in [0, 1], got 1.5"), "{stderr}");
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
    let (ok, stdout, stderr) = mien(&["profile", "detect", "--detector", "haar", "--device", "gpu", "--frames", "2", "--size", "320x240", "--trace", s(&trace)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ms GPU time per frame") && stdout.contains("host per frame:") && stdout.contains("haar stage 0"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(doc["traceEvents"].as_array().unwrap().iter().any(|e| e["name"] == "resize"));
    assert_eq!(doc["otherData"]["frames"], 2);
    // YuNet, the default: its convolutions and the rest, in one command buffer a frame.
    let (ok, stdout, stderr) = mien(&["profile", "detect", "--device", "gpu", "--frames", "2", "--size", "320x240", "--trace", s(&trace)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("through YuNet") && stdout.contains("conv2d_grouped"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert_eq!((doc["otherData"]["frames"].as_u64(), doc["otherData"]["detector"].as_str()), (Some(2), Some("yunet")));
    let (ok, _, stderr) = mien(&["profile", "detect", "--size", "320by240"]);
    assert!(!ok && stderr.contains("WIDTHxHEIGHT"), "{stderr}");
}

#[test]
fn detect_never_writes_over_an_input_or_another_output() {
    let out = temp_dir("names");
    let other = temp_dir("names-other");
    // An input inside --out whose name an output could take, and two inputs with one stem.
    std::fs::copy("data/photos/astronaut.png", out.join("astronaut.png")).unwrap();
    std::fs::copy("data/photos/astronaut.png", out.join("face.annotated.png")).unwrap();
    std::fs::copy("data/photos/astronaut.png", out.join("face.png")).unwrap();
    std::fs::copy("data/photos/grace_hopper.jpg", other.join("face.jpg")).unwrap();
    let before: Vec<Vec<u8>> = ["astronaut.png", "face.annotated.png", "face.png"].iter().map(|n| std::fs::read(out.join(n)).unwrap()).collect();
    let json = out.join("faces.json");
    let (ok, stdout, stderr) = mien(&[
        "detect",
        "--device",
        "cpu",
        "--no-emotion",
        s(&out.join("astronaut.png")),
        s(&out.join("face.annotated.png")),
        s(&out.join("face.png")),
        s(&other.join("face.jpg")),
        "--out",
        s(&out),
        "--json",
        s(&json),
    ]);
    assert!(ok, "{stderr}");
    let after: Vec<Vec<u8>> = ["astronaut.png", "face.annotated.png", "face.png"].iter().map(|n| std::fs::read(out.join(n)).unwrap()).collect();
    assert!(before == after, "an input was written over");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let written: Vec<&str> = report.as_array().unwrap().iter().map(|r| r["annotated"].as_str().unwrap()).collect();
    let expected = ["astronaut.annotated.png", "face.annotated.annotated.png", "face.annotated-2.png", "face.annotated-3.png"];
    assert!(written.iter().zip(expected).all(|(w, e)| w.ends_with(e)), "{written:?}");
    for w in &written {
        assert!(Path::new(w).exists() && stdout.contains(&format!("-> {w}")), "{w}: {stdout}");
    }
    // --out naming a file is refused before any work.
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "data/photos/astronaut.png", "--out", s(&json)]);
    assert!(!ok && stderr.contains("exists and is not a folder"), "{stderr}");
}

#[test]
fn detect_writes_each_faces_crop_and_never_over_an_input() {
    let out = temp_dir("crops");
    let (ok, stdout, stderr) = mien(&["detect", "--device", "cpu", "--crops", "data/photos/grace_hopper.jpg", "--out", s(&out), "--json", "-"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let crop = report[0]["faces"][0]["crop"].as_str().unwrap();
    assert!(crop.ends_with("grace_hopper.face1.png"), "{crop}");
    let pixels = image::open(crop).unwrap();
    assert_eq!((pixels.width(), pixels.height(), pixels.color()), (48, 48, image::ColorType::L8));
    // A crop's name taken by an input fails that image, and the input stays as it was.
    let inputs = temp_dir("crops-inputs");
    std::fs::copy("data/photos/grace_hopper.jpg", inputs.join("g.jpg")).unwrap();
    std::fs::copy("data/photos/astronaut.png", inputs.join("g.face1.png")).unwrap();
    let before = std::fs::read(inputs.join("g.face1.png")).unwrap();
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "--crops", s(&inputs), "--out", s(&inputs)]);
    assert!(!ok && stderr.contains("g.face1.png: is an input"), "{stderr}");
    assert_eq!(std::fs::read(inputs.join("g.face1.png")).unwrap(), before);
}

#[test]
fn a_bad_input_among_good_ones_is_reported_and_the_others_still_done() {
    let dir = temp_dir("mixed");
    std::fs::write(dir.join("broken.jpg"), &std::fs::read("data/photos/grace_hopper.jpg").unwrap()[..300]).unwrap();
    let out = temp_dir("mixed-out");
    let (ok, stdout, stderr) =
        mien(&["detect", "--device", "cpu", "--no-emotion", "data/photos/grace_hopper.jpg", s(&dir.join("broken.jpg")), "data/photos/astronaut.png", "--out", s(&out), "--json", "-"]);
    assert!(!ok, "a failed input must fail the run");
    assert!(stderr.contains("1 of 3 inputs failed") && stderr.contains("broken.jpg"), "{stderr}");
    // The JSON on standard output holds the two good images, and nothing else is there.
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let images: Vec<&str> = report.as_array().unwrap().iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(images, ["data/photos/grace_hopper.jpg", "data/photos/astronaut.png"]);
}

#[test]
fn a_failed_write_to_standard_output_is_an_error_not_a_panic() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = temp_dir("full");
    let run = mien_command(&["detect", "--device", "cpu", "--no-emotion", "data/photos/astronaut.png", "--out", s(&out), "--json", "-"]).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("cannot write the JSON to standard output") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_scale_factor_too_close_to_one_is_refused_at_once() {
    let started = std::time::Instant::now();
    let (ok, _, stderr) = mien(&["detect", "--device", "cpu", "--no-emotion", "--detector", "haar", "--scale-factor", "1.0000001", "data/photos/astronaut.png", "--out", s(&temp_dir("scale"))]);
    assert!(!ok && stderr.contains("scale"), "{stderr}");
    assert!(started.elapsed().as_secs() < 60, "refusing took {:?}", started.elapsed());
}

#[test]
fn an_adapter_that_matches_none_is_an_error_not_a_silent_fallback_to_the_cpu() {
    let (ok, _, stderr) = mien(&["--adapter", "no-such-adapter", "detect", "--no-emotion", "data/photos/astronaut.png", "--out", s(&temp_dir("adapter"))]);
    assert!(!ok && stderr.contains("no-such-adapter"), "{stderr}");
}

/// A FER2013-shaped folder (train/ and test/ with a folder per class) of small synthetic
/// images, `per_class` in each training class.
fn tiny_fer(name: &str, per_class: usize) -> PathBuf {
    let dir = temp_dir(name);
    for (split, n) in [("train", per_class), ("test", 2)] {
        for (c, class) in ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"].iter().enumerate() {
            let folder = dir.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * (c as u32 + 1) + y * 3 + i as u32 * 17) % 256) as u8])).save(folder.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    dir
}

const TINY_MODEL: &str = r#"{"name": "tiny", "input": [1, 48, 48], "classes": 7, "layers": [
    {"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "relu"}, {"type": "max_pool", "size": 4},
    {"type": "flatten"}, {"type": "dense", "units": 7}]}"#;

#[test]
fn degenerate_training_runs_are_refused_before_any_work() {
    let data = tiny_fer("degenerate", 2);
    let model = data.join("tiny.json");
    std::fs::write(&model, TINY_MODEL).unwrap();
    let out = data.join("run");
    for (flags, expected) in [
        (&["--epochs", "0"][..], "--epochs 0"),
        (&["--lr", "-1"], "--lr must be a positive number, got -1"),
        (&["--lr", "NaN"], "--lr must be a positive number, got NaN"),
        (&["--lr", "0"], "--lr must be a positive number, got 0"),
        (&["--momentum", "0.5"], "--momentum, --weight-decay and --no-nesterov set SGD; add --optimizer sgd"),
        (&["--optimizer", "sgd", "--momentum", "1"], "--momentum must be in [0, 1), got 1"),
        (&["--optimizer", "sgd", "--weight-decay", "-1"], "--weight-decay must be a number of at least 0, got -1"),
        (&["--warmup", "40"], "--warmup 40 must be below --epochs 40"),
        (&["--warmup", "2", "--schedule", "plateau"], "--warmup needs --schedule cosine"),
        (&["--subset", "0"], "--subset 0"),
        (&["--val-split", "0"], "--val-split 0 must be above 0"),
        (&["--val-split", "0.999"], "no images"),
    ] {
        let mut args = vec!["train", "--device", "cpu", "--data", s(&data), "--model", s(&model), "--recipe", "adam", "--out", s(&out)];
        args.extend_from_slice(flags);
        let (ok, _, stderr) = mien(&args);
        assert!(!ok && stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(!out.join("checkpoint-0001").exists(), "{flags:?} trained");
    }
}

#[test]
fn a_run_killed_at_any_checkpoint_write_resumes_to_the_uninterrupted_result() {
    let data = tiny_fer("killed", 3);
    let model = data.join("tiny.json");
    std::fs::write(&model, TINY_MODEL).unwrap();
    let train = |out: &Path, extra: &[&str], fail_point: Option<&str>| {
        let mut command = mien_command(&["train", "--device", "cpu", "--data", s(&data), "--model", s(&model), "--recipe", "adam", "--out", s(out), "--epochs", "2", "--batch", "7"]);
        command.args(extra).env_remove("MIEN_FAIL_POINT");
        if let Some(point) = fail_point {
            command.env("MIEN_FAIL_POINT", point);
        }
        let run = command.output().unwrap();
        (run.status.success(), String::from_utf8_lossy(&run.stderr).into_owned())
    };
    let history = |out: &Path| -> Vec<(u64, String)> {
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint-0002/state.json")).unwrap()).unwrap();
        state["history"].as_array().unwrap().iter().map(|m| (m["epoch"].as_u64().unwrap(), format!("{:.6} {:.6}", m["train_loss"], m["val_loss"]))).collect()
    };
    let straight = data.join("straight");
    let (ok, stderr) = train(&straight, &[], None);
    assert!(ok, "{stderr}");
    let expected = history(&straight);
    for point in ["weights", "optimizer", "best", "state", "commit", "prune", "publish"] {
        for epoch in [1, 2] {
            let out = data.join(format!("killed-{point}-{epoch}"));
            let (ok, stderr) = train(&out, &[], Some(&format!("{point}@{epoch}")));
            assert!(!ok && stderr.contains("MIEN_FAIL_POINT"), "{point}@{epoch}: {stderr}");
            // Without --resume the folder's run is not silently replaced; with it, the run
            // ends as the uninterrupted one did.
            let resumed = if out.join("checkpoint-0001").exists() || out.join("checkpoint-0002").exists() { &["--resume"][..] } else { &[] };
            let (ok, stderr) = train(&out, resumed, None);
            assert!(ok, "{point}@{epoch}: {stderr}");
            assert_eq!(history(&out), expected, "{point}@{epoch}");
            let leftovers: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| (n.starts_with("checkpoint-") && n != "checkpoint-0002") || n.ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{point}@{epoch}: {leftovers:?}");
        }
    }
    // A finished run is not replaced without --overwrite, and a resume with other data is refused.
    let (ok, stderr) = train(&straight, &[], None);
    assert!(!ok && stderr.contains("holds a finished run") && stderr.contains("--overwrite"), "{stderr}");
    let other = tiny_fer("killed-other", 4);
    let run = mien_command(&["train", "--device", "cpu", "--data", s(&other), "--model", s(&model), "--recipe", "adam", "--out", s(&straight), "--epochs", "3", "--batch", "7", "--resume"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("trained on other data"), "{stderr}");
}

/// `mien train` of the tiny model on the tiny FER folders `data` (with the model's config
/// written there) into `out`, with the `extra` flags: (success, stdout, stderr).
fn train_tiny(data: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let model = data.join("tiny.json");
    std::fs::write(&model, TINY_MODEL).unwrap();
    let mut args = vec!["train", "--device", "cpu", "--data", s(data), "--model", s(&model), "--recipe", "adam", "--batch", "7", "--out", s(out)];
    args.extend_from_slice(extra);
    mien(&args)
}

#[test]
fn init_starts_a_new_run_from_given_weights_and_refuses_another_models() {
    let data = tiny_fer("init", 3);
    let train = |out: &Path, extra: &[&str]| {
        let (ok, _, stderr) = train_tiny(&data, out, extra);
        (ok, stderr)
    };
    let val_loss = |out: &Path, epoch: usize| {
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("checkpoint-{epoch:04}/state.json"))).unwrap()).unwrap();
        state["history"][epoch - 1]["val_loss"].as_f64().unwrap()
    };
    let first = data.join("first");
    let (ok, stderr) = train(&first, &["--epochs", "2"]);
    assert!(ok, "{stderr}");
    // At a learning rate too small to move the weights, the new run validates as the weights
    // it started from did.
    let again = data.join("again");
    let (ok, stderr) = train(&again, &["--epochs", "1", "--lr", "1e-12", "--init", s(&first.join("checkpoint-0002/weights.safetensors"))]);
    assert!(ok, "{stderr}");
    let (loss, trained) = (val_loss(&again, 1), val_loss(&first, 2));
    assert!((loss - trained).abs() < 1e-5, "{loss} against {trained}");
    // Weights of another model are refused, naming the file, before the run folder is made.
    let other = data.join("other");
    let (ok, stderr) = train(&other, &["--epochs", "1", "--init", "data/models/original.safetensors"]);
    assert!(!ok && stderr.contains("original.safetensors") && stderr.contains("tensor"), "{stderr}");
    assert!(!other.exists());
}

/// `--teacher`: any model of the seven classes teaches (here the original model teaches a
/// tiny one, and an ensemble of it and a trained tiny one); a missing teacher file is refused
/// before a run folder is made, and so is --distill without a teacher.
#[test]
fn train_distils_from_teachers() {
    let data = tiny_fer("distil", 3);
    let train = |out: &Path, extra: &[&str]| train_tiny(&data, out, &[&["--epochs", "1"], extra].concat());
    let first = data.join("first");
    let (ok, _, stderr) = train(&first, &[]);
    assert!(ok, "{stderr}");
    let teachers = format!("data/models/original.safetensors,{}", first.join("best.safetensors").display());
    let taught = data.join("taught");
    let (ok, stdout, stderr) = train(&taught, &["--teacher", &teachers, "--distill", "0.7"]);
    assert!(ok && stdout.contains("the teachers:"), "{stdout}\n{stderr}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(taught.join("checkpoint-0001/state.json")).unwrap()).unwrap();
    assert_eq!(state["recipe"]["distill"].as_f64(), Some(0.7));
    assert_eq!(state["recipe"]["teachers"].as_array().map(Vec::len), Some(2));
    // A wrong start is refused before the teachers' pass; a resumed run reads back the
    // probabilities the pass saved instead of making it again.
    let (ok, stdout, stderr) = train(&taught, &["--teacher", &teachers, "--distill", "0.7"]);
    assert!(!ok && stderr.contains("--resume") && !stdout.contains("classifying"), "{stdout}\n{stderr}");
    let saved = std::fs::read(taught.join("teacher_probabilities.f32")).unwrap();
    let (ok, stdout, stderr) = train_tiny(&data, &taught, &["--epochs", "2", "--teacher", &teachers, "--distill", "0.7", "--resume"]);
    assert!(ok && stdout.contains("read back from") && !stdout.contains("classifying") && taught.join("checkpoint-0002").exists(), "{stdout}\n{stderr}");
    assert_eq!(std::fs::read(taught.join("teacher_probabilities.f32")).unwrap(), saved);
    // A teacher's file changed since the run began: the resume is refused, naming it.
    std::fs::copy("data/models/original.safetensors", first.join("best.safetensors")).unwrap();
    let (ok, stdout, stderr) = train_tiny(&data, &taught, &["--epochs", "3", "--teacher", &teachers, "--distill", "0.7", "--resume"]);
    assert!(!ok && stderr.contains("best.safetensors: this teacher's weights changed") && !stdout.contains("classifying"), "{stdout}\n{stderr}");
    // --overwrite with other teachers makes the pass anew.
    let other_teacher = data.join("other-teacher");
    let (ok, stdout, stderr) = train(&other_teacher, &["--teacher", "data/models/original.safetensors"]);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = train(&taught, &["--teacher", "data/models/original.safetensors", "--overwrite"]);
    assert!(ok && stdout.contains("classifying"), "{stdout}\n{stderr}");
    assert_eq!(std::fs::read(taught.join("teacher_probabilities.f32")).unwrap(), std::fs::read(other_teacher.join("teacher_probabilities.f32")).unwrap());
    let missing = data.join("missing");
    let (ok, _, stderr) = train(&missing, &["--teacher", "no-such-teacher.safetensors"]);
    assert!(!ok && stderr.contains("no-such-teacher.safetensors"), "{stderr}");
    assert!(!missing.exists());
    let (ok, _, stderr) = train(&missing, &["--distill", "0.5"]);
    assert!(!ok && stderr.contains("--teacher"), "{stderr}");
}

#[test]
fn eval_writes_its_json_to_standard_output() {
    let data = tiny_fer("eval-json", 1);
    let (ok, stdout, stderr) = mien(&["eval", "--device", "cpu", "--data", s(&data.join("test")), "--json", "-"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["images"].as_u64(), Some(14));
}

#[test]
fn eval_takes_an_ensemble_of_shipped_models_by_name_and_names_a_missing_member() {
    let data = tiny_fer("eval-ensemble", 1);
    let test = data.join("test");
    let (ok, stdout, stderr) = mien(&["eval", "--device", "cpu", "--data", s(&test), "--weights", "vgg,data/models/original.safetensors"]);
    assert!(ok && stdout.contains("14 images: accuracy"), "{stdout}{stderr}");
    let (ok, _, stderr) = mien(&["eval", "--device", "cpu", "--data", s(&test), "--weights", "vgg,no-such.safetensors"]);
    assert!(!ok && stderr.contains("no-such.safetensors: cannot read"), "{stderr}");
    let (ok, _, stderr) = mien(&["eval", "--device", "cpu", "--data", s(&test), "--weights", "no_such_model"]);
    assert!(!ok && stderr.contains("data/models/no_such_model.safetensors: cannot read"), "{stderr}");
}
