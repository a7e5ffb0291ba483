//! Detection against OpenCV: fixtures made by tools/opencv_fixtures.py with opencv-python
//! (single thread, no OpenCL), committed in data/fixtures/haar so these tests need no OpenCV.

use mien::detect::{cpu, group_rectangles, Cascade, DetectParams, Rect};
use serde_json::Value;
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

#[test]
fn cpu_detector_matches_opencv_on_every_fixture() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/fixtures/haar"));
    let cascades = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/haarcascades"));
    let mut mismatches = Vec::new();
    let mut runs = 0;
    for (name, f) in fixtures() {
        let img = image::open(dir.join(f["image"].as_str().unwrap())).unwrap().to_luma8();
        for run in f["runs"].as_array().unwrap() {
            // Cascades beside the fixtures (the old-format one) first, then the shared ones.
            let cascade_name = run["cascade"].as_str().unwrap();
            let local = dir.join(cascade_name);
            let path = if local.exists() { local } else { cascades.join(cascade_name) };
            let cascade = Cascade::load(&path).unwrap();
            let p = params(run);
            let got = cpu::detect_multi_scale(&cascade, &img, &p);
            let want = rects(&run["rects"]);
            runs += 1;
            if got != want {
                mismatches.push(format!("{name} {} {p:?}: got {} rects, want {}\n  got  {:?}\n  want {:?}", run["cascade"], got.len(), want.len(), &got[..got.len().min(6)], &want[..want.len().min(6)]));
            }
        }
    }
    assert!(runs >= 60, "only {runs} fixture runs");
    assert!(mismatches.is_empty(), "{} of {runs} runs differ from OpenCV:\n{}", mismatches.len(), mismatches.join("\n"));
}
