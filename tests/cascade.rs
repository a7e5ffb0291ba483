//! The cascade parser: every shipped OpenCV cascade, the old XML format, malformed input, and a
//! seeded mutation fuzz loop that must never panic.

use mien::detect::Cascade;
use mien::rng::Rng;
use std::path::PathBuf;

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

#[test]
fn mutated_cascades_never_panic() {
    // A small seeded fuzz loop over a tiny corpus (one file per format): truncations, byte
    // changes and deleted spans. Every outcome must be a value or an error, never a panic.
    assert!(Cascade::parse(NEW_FORMAT, "new.xml").is_ok());
    let mut rng = Rng::new(2024);
    let alphabet = b"<>/_ 0123456789.-e\n";
    for i in 0..2000 {
        let mut bytes = [NEW_FORMAT, OLD_FORMAT][i % 2].as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
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
        let _ = Cascade::parse(&String::from_utf8_lossy(&bytes), "fuzz.xml");
    }
}
