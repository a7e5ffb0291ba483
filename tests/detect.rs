//! Detection against OpenCV: fixtures made by tools/opencv_fixtures.py with opencv-python
//! (single thread, no OpenCL), committed in data/fixtures/haar so these tests need no OpenCV.

mod common;

use mien::detect::gpu::{integrals_gpu, norm_factors_gpu, resize_gpu, GpuDetector};
use mien::detect::{cpu, group_rectangles, Cascade, DetectParams, Rect};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/haar"));
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("grey_conversion.json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn rects(v: &Value) -> Vec<Rect> {
    v.as_array().unwrap().iter().map(|r| Rect { x: r[0].as_i64().unwrap() as i32, y: r[1].as_i64().unwrap() as i32, w: r[2].as_i64().unwrap() as i32, h: r[3].as_i64().unwrap() as i32 }).collect()
}

#[test]
fn grouping_opencvs_raw_windows_gives_opencvs_detections() {
    // Runs with min_neighbors 0 return OpenCV's raw windows; grouping them must give exactly the
    // same-parameter run with min_neighbors 3, in the same order.
    let mut checked = 0;
    for (name, f) in fixtures() {
        let runs = f["runs"].as_array().unwrap();
        for raw in runs.iter().filter(|r| r["min_neighbors"] == 0) {
            let same = |r: &&Value| r["cascade"] == raw["cascade"] && r["scale_factor"] == raw["scale_factor"] && r["min_size"] == raw["min_size"] && r["max_size"] == raw["max_size"];
            for grouped in runs.iter().filter(same).filter(|r| r["min_neighbors"] != 0) {
                let k = grouped["min_neighbors"].as_u64().unwrap() as usize;
                assert_eq!(group_rectangles(&rects(&raw["rects"]), k, 0.2), rects(&grouped["rects"]), "{name}: {} scale {} min_neighbors {k}", raw["cascade"], raw["scale_factor"]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} fixture pairs");
}

#[test]
fn colour_to_grey_matches_opencv() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/haar/grey_conversion.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let check = |bgr: &Value, want: &Value, what: &str| {
        let c: Vec<u8> = bgr.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        assert_eq!(mien::detect::grey::grey_pixel(c[2], c[1], c[0]) as u64, want.as_u64().unwrap(), "{what}: bgr {c:?}");
    };
    for s in f["synthetic"].as_array().unwrap() {
        check(&s[0], &s[1], "synthetic");
    }
    for photo in f["photos"].as_array().unwrap() {
        for s in photo["samples"].as_array().unwrap() {
            check(&s[2], &s[3], photo["file"].as_str().unwrap());
        }
    }
    // A lossless photo decoded here converts to exactly OpenCV's grey at the sampled points.
    let astronaut = image::open(concat!(env!("CARGO_MANIFEST_DIR"), "/data/photos/astronaut.png")).unwrap();
    let grey = mien::detect::grey::to_grey(&astronaut);
    let photo = &f["photos"][0];
    assert!(photo["file"].as_str().unwrap().ends_with("astronaut.png"));
    for s in photo["samples"].as_array().unwrap() {
        let (x, y) = (s[0].as_u64().unwrap() as u32, s[1].as_u64().unwrap() as u32);
        assert_eq!(grey.get_pixel(x, y).0[0] as u64, s[3].as_u64().unwrap(), "astronaut ({x}, {y})");
    }
}

fn params(run: &Value) -> DetectParams {
    let size = |v: &Value| v.as_array().map(|a| (a[0].as_u64().unwrap() as u32, a[1].as_u64().unwrap() as u32));
    DetectParams {
        scale_factor: run["scale_factor"].as_f64().unwrap(),
        min_neighbors: run["min_neighbors"].as_u64().unwrap() as usize,
        min_size: size(&run["min_size"]).unwrap_or((0, 0)),
        max_size: size(&run["max_size"]),
    }
}

/// Every fixture run: (fixture name, image, cascade path, params, OpenCV's rectangles).
fn fixture_runs() -> Vec<(String, image::GrayImage, PathBuf, DetectParams, Vec<Rect>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/haar"));
    let cascades = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/haarcascades"));
    let mut out = Vec::new();
    for (name, f) in fixtures() {
        let img = image::open(dir.join(f["image"].as_str().unwrap())).unwrap().to_luma8();
        for run in f["runs"].as_array().unwrap() {
            // Cascades beside the fixtures (the old-format one) first, then the shared ones.
            let cascade_name = run["cascade"].as_str().unwrap();
            let local = dir.join(cascade_name);
            let path = if local.exists() { local } else { cascades.join(cascade_name) };
            out.push((name.clone(), img.clone(), path, params(run), rects(&run["rects"])));
        }
    }
    out
}

/// Runs `detect` on the fixture runs and lists those that differ from OpenCV.
fn check_against_opencv(runs: Vec<(String, image::GrayImage, PathBuf, DetectParams, Vec<Rect>)>, mut detect: impl FnMut(&Cascade, &image::GrayImage, &DetectParams) -> Vec<Rect>) {
    let mut cascades: HashMap<PathBuf, Cascade> = HashMap::new();
    let mut mismatches = Vec::new();
    for (name, img, path, p, want) in &runs {
        let cascade = cascades.entry(path.clone()).or_insert_with(|| Cascade::load(path).unwrap());
        let got = detect(cascade, img, p);
        if &got != want {
            mismatches.push(format!("{name} {} {p:?}: got {} rects, want {}\n  got  {:?}\n  want {:?}", path.display(), got.len(), want.len(), &got[..got.len().min(6)], &want[..want.len().min(6)]));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} runs differ from OpenCV:\n{}", mismatches.len(), runs.len(), mismatches.join("\n"));
}

#[test]
fn cpu_detector_matches_opencv_on_every_fixture() {
    let runs = fixture_runs();
    assert!(runs.len() >= 100, "only {} fixture runs", runs.len());
    check_against_opencv(runs, |cascade, img, p| cpu::detect_multi_scale(cascade, img, p).unwrap());
}

fn check_gpu(runs: Vec<(String, image::GrayImage, PathBuf, DetectParams, Vec<Rect>)>) {
    check_gpu_on(common::gpu(), runs);
}

fn check_gpu_on(gpu: &'static mien::gpu::Gpu, runs: Vec<(String, image::GrayImage, PathBuf, DetectParams, Vec<Rect>)>) {
    let mut detectors: HashMap<*const Cascade, GpuDetector> = HashMap::new();
    check_against_opencv(runs, |cascade, img, p| {
        let detector = detectors.entry(cascade as *const _).or_insert_with(|| GpuDetector::new(gpu, cascade).unwrap());
        detector.detect_multi_scale(img, p).unwrap()
    });
}

#[test]
fn gpu_detector_matches_opencv() {
    // Every run on the small and odd-sized images (tiny, flat, 97x131, ~320x400 crops), and the
    // first run of each cascade on the large ones (the group montage, the astronaut, Grace
    // Hopper): stumps, trees, tilted features, the old format. All of them: the ignored test.
    let mut seen = std::collections::HashSet::new();
    let runs: Vec<_> = fixture_runs().into_iter().filter(|(name, img, path, ..)| img.width() * img.height() <= 140_000 || seen.insert((name.clone(), path.clone()))).collect();
    assert!(runs.len() >= 45, "only {} runs", runs.len());
    check_gpu(runs);
}

/// With 8 MiB bindings the levels of the larger fixtures run in several batches, each with its
/// own list counters; the windows must not change.
#[test]
fn gpu_detector_matches_opencv_with_levels_split_into_batches() {
    let mut seen = std::collections::HashSet::new();
    let runs: Vec<_> = fixture_runs().into_iter().filter(|(name, img, path, ..)| img.width() * img.height() > 100_000 && seen.insert((name.clone(), path.clone()))).collect();
    assert!(runs.len() >= 5, "only {} runs", runs.len());
    check_gpu_on(common::mid_binding_gpu(), runs);
}

/// Frame N + 1 is queued before frame N is read back, in the scratch buffers frame N gave back
/// to the pool at its submit: each frame must still get its own faces. The sizes change from
/// frame to frame, so the buffers do too.
#[test]
fn a_stream_with_a_frame_in_flight_gets_each_frames_faces() {
    let runs: Vec<_> = fixture_runs()
        .into_iter()
        .filter(|(_, img, path, p, _)| path.ends_with("haarcascade_frontalface_default.xml") && *p == DetectParams::default() && img.width() * img.height() <= 140_000)
        .collect();
    assert!(runs.len() >= 4, "only {} runs", runs.len());
    let cascade = Cascade::load(&runs[0].2).unwrap();
    let detector = GpuDetector::new(common::gpu(), &cascade).unwrap();
    // Twice over, so that a frame follows one of another size.
    let frames: Vec<_> = runs.iter().chain(&runs).map(|r| &r.1).collect();
    let mut got = Vec::new();
    detector.detect_stream(frames, &DetectParams::default(), |i, faces| got.push((i, faces))).unwrap();
    let want: Vec<_> = runs.iter().chain(&runs).map(|r| r.4.clone()).enumerate().collect();
    assert_eq!(got, want);
}

/// Settings that would never finish (a factor of 1 never grows the window; 1.0000001 needs
/// millions of levels) are refused by the GPU detector before any work, as by the CPU one.
#[test]
fn the_gpu_detector_refuses_an_endless_pyramid() {
    let cascade = Cascade::load(&PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/cascades/haarcascade_frontalface_default.xml"))).unwrap();
    let detector = GpuDetector::new(common::gpu(), &cascade).unwrap();
    let img = textured(320, 240, 1);
    for scale_factor in [1.0000001, 1.0, 0.5, f64::NAN] {
        let p = DetectParams { scale_factor, ..Default::default() };
        let err = detector.detect_multi_scale(&img, &p).unwrap_err();
        assert!(matches!(err, mien::Error::Invalid(_)), "{err}");
        assert_eq!(err.to_string(), p.validate_for(cascade.window, (320, 240)).unwrap_err().to_string());
        assert!(detector.detect_stream([&img], &p, |_, _| panic!("no frame should finish")).is_err());
        assert!(cpu::detect_multi_scale(&cascade, &img, &p).is_err());
    }
}

#[test]
#[ignore = "slow on lavapipe (minutes): every fixture run on the GPU"]
fn gpu_detector_matches_opencv_on_every_fixture() {
    check_gpu(fixture_runs());
}

/// A seeded grey image with texture at several scales, so that windows pass some stages.
fn textured(w: u32, h: u32, seed: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let v = (x * 7 + y * 13 + seed).wrapping_mul(2654435761) >> 24;
        image::Luma([((v + (x / 5 + y / 3) * 40) % 256) as u8])
    })
}

/// resize.wgsl against the CPU's INTER_LINEAR_EXACT.
#[test]
fn gpu_resize_matches_the_cpu_bit_for_bit() {
    let gpu = common::gpu();
    for (sw, sh, dw, dh) in [(97, 61, 88, 55), (640, 480, 64, 48), (33, 17, 33, 17), (1, 9, 1, 4), (130, 7, 11, 6), (301, 203, 150, 101)] {
        let src = textured(sw, sh, sw);
        assert_eq!(pollster::block_on(resize_gpu(gpu, &src, dw, dh)).unwrap(), cpu::resize_exact(&src, dw, dh), "{sw}x{sh} -> {dw}x{dh}");
    }
}

#[test]
fn gpu_integrals_match_the_cpu_including_tilted() {
    let gpu = common::gpu();
    for (w, h) in [(1, 1), (1, 13), (17, 1), (29, 23), (70, 9), (65, 66)] {
        let img = textured(w, h, 7);
        let (want, got) = (cpu::Integrals::new(&img, true), pollster::block_on(integrals_gpu(gpu, &img, true)).unwrap());
        assert_eq!(got.sum, want.sum, "{w}x{h} sum");
        assert_eq!(got.sqsum, want.sqsum, "{w}x{h} sqsum");
        assert_eq!(got.tilted, want.tilted, "{w}x{h} tilted");
    }
    // Squared sums past 2^31 wrap the same way on both (255^2 * 40,000 pixels > 2^31).
    let bright = image::GrayImage::from_pixel(200, 200, image::Luma([255]));
    assert_eq!(pollster::block_on(integrals_gpu(gpu, &bright, false)).unwrap().sqsum, cpu::Integrals::new(&bright, false).sqsum);
}

/// haar_cascade.wgsl's norm factor (its `norm_probe` entry point), against OpenCV's f64 formula.
#[test]
fn gpu_norm_factors_are_opencvs_double_rounded_value() {
    // OpenCV: f32(1 / sqrt(f64(nf))). Values across the range windows produce (1 to ~2^42),
    // plus values next to f32 rounding midpoints, where only exact integer tests get it right.
    let mut nfs: Vec<u64> = (0..4000u64).map(|i| 1 + (i.wrapping_mul(i).wrapping_mul(i).wrapping_mul(2_654_435_761)) % (1u64 << 42)).collect();
    nfs.extend([1, 2, 3, 4, 1 << 40, (1 << 42) - 1, 23_425_600, 23_425_601]);
    for m in [0x80_0001u64, 0xab_cdefu64, 0xff_ffffu64] {
        // A midpoint (2m + 1) * 2^-k of 1/sqrt(nf) means nf ~ 2^(2k) / (2m + 1)^2.
        let mid = (2 * m + 1) as f64 * 2f64.powi(-33);
        let nf = (1.0 / (mid * mid)).round() as u64;
        nfs.extend([nf - 1, nf, nf + 1]);
    }
    let got = pollster::block_on(norm_factors_gpu(common::gpu(), &nfs)).unwrap();
    let mut ambiguous = 0;
    for (&nf, &(vnf, flagged)) in nfs.iter().zip(&got) {
        let want = (1.0 / (nf as f64).sqrt()) as f32;
        if flagged {
            ambiguous += 1;
        } else {
            assert_eq!(vnf.to_bits(), want.to_bits(), "nf {nf}: got {vnf:e}, want {want:e}");
        }
    }
    assert!(ambiguous <= 2, "{ambiguous} of {} flagged as too close to call", nfs.len());
}
