//! The cascade parser: every shipped OpenCV cascade, the old XML format, malformed input, hostile
//! numbers (non-finite, huge, fractional indices, wrapping rectangles), and a seeded mutation fuzz
//! loop whose every outcome is an error or a cascade the detector runs on without panicking.

use mien::detect::cascade::{MAX_MAGNITUDE, MAX_WINDOW};
use mien::detect::{cpu, Cascade, DetectParams};
use mien::rng::Rng;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

fn shared_cascades() -> PathBuf {
    std::env::var_os("MIEN_CASCADES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/haarcascades")))
}

/// Counts `<_>` children under the first `tag` the way a reader of the XML would, to check the
/// parser against the file itself.
fn declared(xml: &str, tag: &str) -> usize {
    let start = xml.find(&format!("<{tag}>")).unwrap();
    xml[start..].split(&format!("</{tag}>")).next().unwrap().matches("<rects>").count()
}

#[test]
fn every_shared_cascade_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(shared_cascades()).expect("../shared/data/haarcascades (or MIEN_CASCADES)") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let xml = std::fs::read_to_string(&path).unwrap();
            let c = Cascade::parse(&xml, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
            let stage_num: usize = xml.split("<stageNum>").nth(1).unwrap().split('<').next().unwrap().trim().parse().unwrap();
            assert_eq!(c.stages.len(), stage_num, "{}", path.display());
            assert_eq!(c.features.len(), declared(&xml, "features"), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 5, "found {n} cascades");
}

#[test]
fn the_shipped_frontal_face_cascade_has_its_known_shape() {
    let c = Cascade::load(&PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/cascades/haarcascade_frontalface_default.xml"))).unwrap();
    assert_eq!(c.window, (24, 24));
    assert_eq!(c.stages.len(), 25);
    assert_eq!(c.stages[0].trees.len(), 9);
    assert_eq!(c.stages.iter().map(|s| s.trees.len()).sum::<usize>(), 2913);
    assert!(c.stages.iter().flat_map(|s| &s.trees).all(|t| t.splits.len() == 1 && t.leaves.len() == 2));
}

#[test]
fn trees_and_tilted_features_are_read() {
    let alt2 = Cascade::load(&shared_cascades().join("haarcascade_frontalface_alt2.xml")).unwrap();
    let tree = &alt2.stages[0].trees[0];
    assert_eq!(tree.splits.len(), 2);
    assert_eq!((tree.splits[0].left, tree.splits[0].right, tree.splits[1].left, tree.splits[1].right), (0, 1, -1, -2));
    assert_eq!(tree.leaves.len(), 3);
    let smile = Cascade::load(&shared_cascades().join("haarcascade_smile.xml")).unwrap();
    assert_eq!(smile.features.iter().filter(|f| f.tilted).count(), 117);
}

const OLD_FORMAT: &str = r#"<?xml version="1.0"?>
<opencv_storage>
<haarcascade_tiny type_id="opencv-haar-classifier">
  <size>20 20</size>
  <stages>
    <_>
      <trees>
        <_>
          <_>
            <feature><rects><_>3 7 14 4 -1.</_><_>3 9 14 2 2.</_></rects><tilted>0</tilted></feature>
            <threshold>4.0e-03</threshold>
            <left_val>0.0337</left_val>
            <right_node>1</right_node></_>
          <_>
            <feature><rects><_>1 2 18 4 -1.</_><_>7 2 6 4 3.</_></rects><tilted>0</tilted></feature>
            <threshold>0.0151</threshold>
            <left_val>0.1514</left_val>
            <right_val>0.7488</right_val></_></_>
        <_>
          <_>
            <feature><rects><_>6 0 4 4 -1.</_><_>6 0 2 4 2.</_></rects><tilted>1</tilted></feature>
            <threshold>-1.0e-03</threshold>
            <left_val>0.09</left_val>
            <right_val>0.5</right_val></_></_></trees>
      <stage_threshold>0.822</stage_threshold>
      <parent>-1</parent>
      <next>-1</next></_></stages></haarcascade_tiny>
</opencv_storage>
"#;

const NEW_FORMAT: &str = r#"<opencv_storage><cascade type_id="opencv-cascade-classifier">
  <stageType>BOOST</stageType><featureType>HAAR</featureType><height>20</height><width>20</width>
  <stageNum>1</stageNum>
  <stages><_><maxWeakCount>2</maxWeakCount><stageThreshold>0.8</stageThreshold>
    <weakClassifiers>
      <_><internalNodes>0 1 0 4.3e-03 -1 -2 1 1.3e-02</internalNodes><leafValues>0.04 0.9 0.26</leafValues></_>
      <_><internalNodes>0 -1 1 5.2e-04</internalNodes><leafValues>0.1 0.7</leafValues></_></weakClassifiers></_></stages>
  <features>
    <_><rects><_>3 7 14 4 -1.</_><_>3 9 14 2 2.</_></rects><tilted>0</tilted></_>
    <_><rects><_>7 0 4 4 -1.</_><_>7 0 2 4 2.</_></rects><tilted>1</tilted></_></features>
</cascade></opencv_storage>"#;

#[test]
fn the_old_format_becomes_the_same_structure() {
    let c = Cascade::parse(OLD_FORMAT, "old.xml").unwrap();
    assert_eq!(c.window, (20, 20));
    assert_eq!(c.features.len(), 3);
    let stage = &c.stages[0];
    assert_eq!(stage.threshold, 0.822);
    let t = &stage.trees[0];
    assert_eq!(t.splits.len(), 2);
    assert_eq!((t.splits[0].left, t.splits[0].right), (0, 1));
    assert_eq!((t.splits[1].feature, t.splits[1].left, t.splits[1].right), (1, -1, -2));
    assert_eq!(t.leaves, vec![0.0337, 0.1514, 0.7488]);
    assert!(c.features[2].tilted);
}

#[test]
fn malformed_cascades_are_errors_with_the_element_path() {
    let good = std::fs::read_to_string(shared_cascades().join("haarcascade_frontalface_alt2.xml")).unwrap();
    let cases = [
        (good[..good.len() / 2].to_string(), "not well-formed XML"),
        ("<opencv_storage><svg/></opencv_storage>".to_string(), "opencv_storage/svg: not an OpenCV cascade"),
        (good.replacen("0 1 0 4.3272329494357109e-03 -1 -2 1 1.3076160103082657e-02", "0 1 0 4.3e-03 -1 -2 1", 1), "stages/_[0]/weakClassifiers/_[0]/internalNodes: expected 4 numbers per split"),
        (good.replacen("0 1 0 4.3272329494357109e-03", "0 1 99999 4.3272329494357109e-03", 1), "stages/_[0]/weakClassifiers/_[0]: split 0 uses feature 99999"),
        (good.replacen("<stageThreshold>", "<stageThreshold>x", 1), "stages/_[0]/stageThreshold: \"x"),
        (good.replacen("<featureType>HAAR", "<featureType>LBP", 1), "only BOOST stages of HAAR features"),
    ];
    for (xml, want) in cases {
        let err = Cascade::parse(&xml, "bad.xml").unwrap_err().to_string();
        assert!(err.starts_with("bad.xml: ") && err.contains(want), "{err}\n  should contain: {want}");
    }
}

/// `xml` with the first `from` replaced by `to`; `from` must be there, so that a case cannot
/// silently test the unchanged file.
fn mutate(xml: &str, from: &str, to: &str) -> String {
    assert!(xml.contains(from), "{from:?} is not in the file");
    xml.replacen(from, to, 1)
}

/// Parses on another thread, so that a hang fails the test instead of stalling it; a panic
/// fails it too.
fn parse_in_time(xml: String) -> Result<Cascade, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(Cascade::parse(&xml, "bad.xml").map_err(|e| e.to_string())));
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the parser hung"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the parser panicked"),
    }
}

/// Numbers no trained cascade holds, each of which the parser once accepted: every window passed
/// or failed, the GPU encoder looped forever, indices were truncated or saturated, or a rectangle
/// wrapped past the window check and the detectors panicked or invented faces.
#[test]
fn hostile_numbers_are_errors_with_the_element_path() {
    let new = "opencv_storage/cascade";
    let weak = format!("{new}/stages/_[0]/weakClassifiers");
    let rect = format!("{new}/features/_[0]/rects/_[0]");
    let stump = "0 -1 1 5.2e-04";
    let tree = "0 1 0 4.3e-03 -1 -2 1 1.3e-02";
    let mut cases: Vec<(String, String)> = Vec::new();
    let mut case = |xml: String, want: String| cases.push((xml, want));
    for (value, problem) in [("NaN", "is NaN"), ("inf", "is inf"), ("-inf", "is -inf"), ("1e30", "1e30 is beyond")] {
        case(mutate(NEW_FORMAT, "<stageThreshold>0.8<", &format!("<stageThreshold>{value}<")), format!("{new}/stages/_[0]/stageThreshold: the stage threshold {problem}"));
        case(mutate(NEW_FORMAT, stump, &format!("0 -1 1 {value}")), format!("{weak}/_[1]/internalNodes: split 0's threshold {problem}"));
        case(mutate(NEW_FORMAT, "<leafValues>0.1 0.7<", &format!("<leafValues>0.1 {value}<")), format!("{weak}/_[1]/leafValues: a leaf value {problem}"));
        case(mutate(NEW_FORMAT, "<_>3 7 14 4 -1.</_>", &format!("<_>3 7 14 4 {value}</_>")), format!("{rect}: the rectangle weight {problem}"));
    }
    // Past f32's range: infinite as a float, huge as the double OpenCV reads thresholds as.
    case(mutate(NEW_FORMAT, "<stageThreshold>0.8<", "<stageThreshold>3.5e38<"), format!("{new}/stages/_[0]/stageThreshold: the stage threshold is inf"));
    case(mutate(NEW_FORMAT, stump, "0 -1 1 3.5e38"), format!("{weak}/_[1]/internalNodes: split 0's threshold 3.5e38 is beyond"));
    case(mutate(NEW_FORMAT, stump, "0 -1 1 1e300"), format!("{weak}/_[1]/internalNodes: split 0's threshold 1e300 is beyond"));
    // Indices: integral, in the i32 range, and pointing inside the tree and the feature list.
    for (nodes, problem) in [
        ("0 -1 0.5 5.2e-04", "/internalNodes: split 0's feature 0.5 is not an integral index"),
        ("0.25 -1 1 5.2e-04", "/internalNodes: split 0's left 0.25 is not an integral index"),
        ("0 -1.5 1 5.2e-04", "/internalNodes: split 0's right -1.5 is not an integral index"),
        ("NaN -1 1 5.2e-04", "/internalNodes: split 0's left NaN is not an integral index"),
        ("0 -1 inf 5.2e-04", "/internalNodes: split 0's feature inf is not an integral index"),
        ("0 -1 1e10 5.2e-04", "/internalNodes: split 0's feature 10000000000 is not an integral index"),
        ("0 -1e10 1 5.2e-04", "/internalNodes: split 0's right -10000000000 is not an integral index"),
        ("0 -1 -1 5.2e-04", "/internalNodes: split 0 uses feature -1"),
        ("0 -1 2 5.2e-04", ": split 0 uses feature 2 of 2"),
        ("0 -7 1 5.2e-04", ": split 0 points at -7, outside the tree's 1 splits and 2 leaves"),
        ("0 -2147483648 1 5.2e-04", ": split 0 points at -2147483648"),
        ("0 2147483647 1 5.2e-04", ": split 0 points at 2147483647"),
    ] {
        case(mutate(NEW_FORMAT, stump, nodes), format!("{weak}/_[1]{problem}"));
    }
    case(mutate(NEW_FORMAT, tree, "0 5 0 4.3e-03 -1 -2 1 1.3e-02"), format!("{weak}/_[0]: split 0 points at 5"));
    case(mutate(NEW_FORMAT, tree, "0 1 0 4.3e-03 1 -2 1 1.3e-02"), format!("{weak}/_[0]: split 1 points at 1"));
    // Rectangles: integers within the window, checked without wrapping.
    for (r, problem) in [
        ("-3 7 14 4 -1.", "rectangle coordinate \"-3\" is not an integer in 0..=512"),
        ("3.5 7 14 4 -1.", "rectangle coordinate \"3.5\" is not an integer"),
        ("3 7 1e9 4 -1.", "rectangle coordinate \"1e9\" is not an integer"),
        ("4294967295 7 2 4 -1.", "rectangle coordinate \"4294967295\" is not an integer"),
        ("3 4294967295 14 2 -1.", "rectangle coordinate \"4294967295\" is not an integer"),
        ("3 7 nan 4 -1.", "rectangle coordinate \"nan\" is not an integer"),
        ("3 7 14 4", "a rectangle is 5 numbers"),
    ] {
        case(mutate(NEW_FORMAT, "<_>3 7 14 4 -1.</_>", &format!("<_>{r}</_>")), format!("{rect}: {problem}"));
    }
    case(mutate(NEW_FORMAT, "<_>3 7 14 4 -1.</_>", "<_>19 7 2 4 -1.</_>"), format!("{new}/features/_[0]/rects: rectangle"));
    case(mutate(NEW_FORMAT, "<_>7 0 4 4 -1.</_>", "<_>3 0 4 4 -1.</_>"), format!("{new}/features/_[1]/rects: rectangle"));
    // Window sides from 3 to MAX_WINDOW.
    for (side, value) in [("width", "0"), ("width", "2"), ("height", "513"), ("height", "4294967295")] {
        case(mutate(NEW_FORMAT, &format!("<{side}>20<"), &format!("<{side}>{value}<")), format!("{new}/{side}: window side {value} is outside 3..=512"));
    }
    case(mutate(NEW_FORMAT, "<width>20<", "<width>-20<"), format!("{new}/width: \"-20\" is not a number"));
    // The old format: its own element names, the same rules.
    let old = "opencv_storage/haarcascade_tiny";
    let node = format!("{old}/stages/_[0]/trees/_[0]/_[0]");
    case(mutate(OLD_FORMAT, "<threshold>4.0e-03<", "<threshold>inf<"), format!("{node}/threshold: the split threshold is inf"));
    case(mutate(OLD_FORMAT, "<left_val>0.0337<", "<left_val>nan<"), format!("{node}/left_val: a leaf value is NaN"));
    case(mutate(OLD_FORMAT, "<left_val>0.0337<", "<left_val>-1e7<"), format!("{node}/left_val: a leaf value -1e7 is beyond"));
    case(mutate(OLD_FORMAT, "<stage_threshold>0.822<", "<stage_threshold>-inf<"), format!("{old}/stages/_[0]/stage_threshold: the stage threshold is -inf"));
    case(mutate(OLD_FORMAT, "<size>20 20<", "<size>0 20<"), format!("{old}/size: window side 0"));
    case(mutate(OLD_FORMAT, "<size>20 20<", "<size>20 100000<"), format!("{old}/size: window side 100000"));
    case(mutate(OLD_FORMAT, "<right_node>1<", "<right_node>7<"), format!("{old}/stages/_[0]/trees/_[0]: split 0 points at 7"));
    case(mutate(OLD_FORMAT, "<right_node>1<", "<right_node>-2147483648<"), format!("{old}/stages/_[0]/trees/_[0]: split 0 points at -2147483648"));
    case(mutate(OLD_FORMAT, "<right_node>1<", "<right_node>1.5<"), format!("{node}/right_node: \"1.5\" is not a number"));
    case(mutate(OLD_FORMAT, "<_>1 2 18 4 -1.</_>", "<_>4294967295 2 2 4 -1.</_>"), format!("{old}/stages/_[0]/trees/_[0]/_[1]/feature/rects/_[0]: rectangle coordinate \"4294967295\""));
    let tilted_tree = &OLD_FORMAT[OLD_FORMAT.find("<_>\n          <_>\n            <feature><rects><_>6 0").unwrap()..];
    let tilted_tree = &tilted_tree[..tilted_tree.find("</_></_>").unwrap() + "</_></_>".len()];
    case(mutate(OLD_FORMAT, tilted_tree, "<_></_>"), format!("{old}/stages/_[0]/trees/_[1]: a tree without splits"));
    assert!(cases.len() > 50);
    for (xml, want) in cases {
        let err = parse_in_time(xml).map(|_| ()).expect_err(&want);
        assert!(err.starts_with("bad.xml: ") && err.contains(&want), "{err}\n  should contain: {want}");
    }
}

/// What the detectors rely on: every number finite and bounded, every tree evaluable, every
/// rectangle inside the window.
fn assert_safe(c: &Cascade) {
    let bounded = |v: f32| v.is_finite() && v.abs() as f64 <= MAX_MAGNITUDE;
    assert!((3..=MAX_WINDOW).contains(&c.window.0) && (3..=MAX_WINDOW).contains(&c.window.1), "{:?}", c.window);
    for f in &c.features {
        assert!(f.rects.iter().all(|r| r.fits(f.tilted, c.window) && bounded(r.weight)), "{f:?}");
    }
    for s in &c.stages {
        assert!(bounded(s.threshold));
        for t in &s.trees {
            assert_eq!(t.fault(c.features.len()), None);
            assert!(t.leaves.iter().all(|&l| bounded(l)) && t.splits.iter().all(|s| bounded(s.threshold)), "{t:?}");
        }
    }
}

#[test]
fn mutated_cascades_never_panic() {
    // A small seeded fuzz loop over a tiny corpus (one file per format): truncations, byte
    // changes, deleted spans, and numbers swapped for hostile ones (NaN, infinities, huge,
    // fractional, negative, past the u32 and i32 ranges). Every outcome must be an error or a
    // cascade the CPU detector runs on without panicking.
    assert!(Cascade::parse(NEW_FORMAT, "new.xml").is_ok());
    let hostile = ["NaN", "nan", "inf", "-inf", "1e30", "-1e300", "3.5e38", "0.5", "-1.5", "4294967295", "4294967296", "-2147483648", "2147483648", "-1", "0", "1", "2", "7", "1e10", "20", "21"];
    let image = image::GrayImage::from_fn(48, 40, |x, y| image::Luma([((x * 37 + y * 91) % 251) as u8]));
    let params = DetectParams { min_neighbors: 0, ..Default::default() };
    let mut rng = Rng::new(2024);
    let alphabet = b"<>/_ 0123456789.-e\n";
    let mut parsed = 0;
    for i in 0..2000 {
        let mut bytes = [NEW_FORMAT, OLD_FORMAT][i % 2].as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                3 => {
                    // A number: a run of number characters after a '>' or a space.
                    let starts: Vec<usize> = (1..bytes.len()).filter(|&j| matches!(bytes[j - 1], b'>' | b' ') && matches!(bytes[j], b'0'..=b'9' | b'-' | b'.')).collect();
                    if let Some(&at) = starts.get(rng.below(starts.len().max(1))) {
                        let end = (at..bytes.len()).find(|&j| !matches!(bytes[j], b'0'..=b'9' | b'-' | b'.' | b'e' | b'+')).unwrap_or(bytes.len());
                        bytes.splice(at..end, hostile[rng.below(hostile.len())].bytes());
                    }
                }
                0 => bytes.truncate(rng.below(bytes.len() + 1)),
                1 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes[at] = alphabet[rng.below(alphabet.len())];
                }
                _ if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    let end = (at + rng.below(200)).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => {}
            }
        }
        if let Ok(c) = parse_in_time(String::from_utf8_lossy(&bytes).into_owned()) {
            assert_safe(&c);
            cpu::detect_multi_scale(&c, &image, &params).unwrap();
            parsed += 1;
        }
    }
    // Enough mutants survive the parser for the detector to have been tried on some.
    assert!(parsed > 50, "only {parsed} mutants parsed");
}
