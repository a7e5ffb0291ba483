//! FER2013 loading against malformed input: bad CSV bytes and fields are named by line and
//! quoted short, skipped inputs are listed once, stray class folders are reported, and data that
//! could not train is refused with the split and class it lacks.

mod common;

use common::{temp_dir, write_grey_image};
use mien::data::{self, Dataset, Usage, CLASSES, PIXELS};
use std::path::{Path, PathBuf};

/// A CSV row of one grey level.
fn row(label: u8, grey: u8, usage: &str) -> String {
    format!("{label},{},{usage}\n", vec![grey.to_string(); PIXELS].join(" "))
}

/// `rows` under the header, as `fer.csv` in a fresh folder for the test `name`.
fn write_csv(name: &str, rows: &[String]) -> PathBuf {
    let path = temp_dir(name).join("fer.csv");
    std::fs::write(&path, format!("emotion,pixels,Usage\n{}", rows.concat())).unwrap();
    path
}

/// A training and a validation row, the smallest CSV that loads for training.
fn good_rows() -> Vec<String> {
    vec![row(3, 1, "Training"), row(4, 2, "PublicTest")]
}

/// A folder of the 7 class folders with one good image each.
fn write_class_folders(dir: &Path) {
    for class in CLASSES {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        write_grey_image(&dir.join(class).join("a.png"), 48);
    }
}

fn err(result: mien::Result<impl std::fmt::Debug>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn an_unknown_usage_is_an_error_naming_its_line_or_a_skipped_row() {
    let path = write_csv("data-usage", &[good_rows(), vec![row(2, 3, "Validation")]].concat());
    let e = err(data::load(&path, Usage::Training, false));
    assert!(e.ends_with("fer.csv:4: unknown Usage \"Validation\" (expected Training, PublicTest or PrivateTest)"), "{e}");
    let d = data::load(&path, Usage::Training, true).unwrap();
    assert_eq!(d.labels, vec![3]);
    assert!(d.skipped.len() == 1 && d.skipped[0].contains("fer.csv:4: unknown Usage"), "{:?}", d.skipped);
}

#[test]
fn a_utf8_byte_order_mark_before_the_header_is_accepted() {
    let path = write_csv("data-bom", &good_rows());
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, [b"\xEF\xBB\xBF".as_slice(), &text].concat()).unwrap();
    assert_eq!(data::load(&path, Usage::Training, false).unwrap().labels, vec![3]);
}

#[test]
fn invalid_utf8_is_an_error_naming_its_line() {
    let path = write_csv("data-utf8", &good_rows());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"1,\xFF\xFE,Training\n");
    std::fs::write(&path, bytes).unwrap();
    let e = err(data::load(&path, Usage::Training, false));
    assert!(e.contains("fer.csv:4: not UTF-8"), "{e}");
    assert_eq!(data::load(&path, Usage::Training, true).unwrap().skipped.len(), 1);
}

#[test]
fn a_megabyte_bad_token_is_quoted_short() {
    let token = "x".repeat(1 << 20);
    for (field, bad) in [("pixel", format!("1,{token},Training\n")), ("emotion", format!("{token},1 2,Training\n")), ("Usage", format!("1,{},{token}\n", vec!["1"; PIXELS].join(" ")))] {
        let path = write_csv("data-token", &[good_rows(), vec![bad]].concat());
        let e = err(data::load(&path, Usage::Training, false));
        assert!(e.len() < 300 && e.contains("fer.csv:4:") && e.contains("(1048576 bytes)"), "{field}: {} bytes: {}", e.len(), &e[..e.len().min(300)]);
    }
}

#[test]
fn skip_bad_lists_each_bad_input_once_across_train_and_val() {
    let path = write_csv("data-once", &[good_rows(), vec!["0,1 2 3,Training\n".into()]].concat());
    let (train, val) = data::load_train_val(&path, true).unwrap();
    assert_eq!((train.labels, val.labels), (vec![3], vec![5]));
    assert!(train.skipped.len() == 1 && train.skipped[0].contains("fer.csv:4: 3 pixel values"), "{:?}", train.skipped);
    assert!(val.skipped.is_empty(), "{:?}", val.skipped);

    let dir = temp_dir("data-once-folders");
    for split in ["train", "test"] {
        write_class_folders(&dir.join(split));
        std::fs::write(dir.join(split).join("fear/broken.jpg"), b"not a jpeg").unwrap();
    }
    std::fs::create_dir(dir.join("test/contempt")).unwrap();
    let (train, val) = data::load_train_val(&dir, true).unwrap();
    assert_eq!((train.len(), val.len()), (7, 7));
    assert!(train.warnings.len() == 1 && train.warnings[0].contains("test/contempt"), "{:?}", train.warnings);
    assert!(val.warnings.is_empty(), "{:?}", val.warnings);
    assert!(train.skipped.len() == 2 && train.skipped[0].contains("train/fear/broken.jpg") && train.skipped[1].contains("test/fear/broken.jpg"), "{:?}", train.skipped);
    assert!(val.skipped.is_empty(), "{:?}", val.skipped);
    assert!(err(data::load_train_val(&dir, false)).contains("train/fear/broken.jpg: not an image mien reads"));
}

#[test]
fn an_unknown_class_folder_is_a_warning_naming_it() {
    let dir = temp_dir("data-contempt");
    write_class_folders(&dir);
    for extra in ["contempt", ".thumbnails"] {
        std::fs::create_dir(dir.join(extra)).unwrap();
        write_grey_image(&dir.join(extra).join("a.png"), 48);
    }
    let d = data::load(&dir, Usage::Training, false).unwrap();
    assert_eq!(d.len(), 7);
    assert!(d.skipped.is_empty(), "{:?}", d.skipped);
    assert!(d.warnings.len() == 1 && d.warnings[0].contains("contempt: not a class folder"), "{:?}", d.warnings);

    std::fs::write(dir.join("happy/notes.txt"), "not an image").unwrap();
    assert!(err(data::load(&dir, Usage::Training, false)).contains("happy/notes.txt: not an image mien reads"));
}

#[test]
fn empty_splits_are_errors_naming_them() {
    let path = write_csv("data-no-val", &[row(3, 1, "Training")]);
    assert!(err(data::load_train_val(&path, false)).ends_with("fer.csv: no PublicTest rows"));
    let path = write_csv("data-no-train", &[row(3, 1, "PublicTest"), "3,1,Training\n".into()]);
    // When skipping emptied a split, the error says why, as the skipped list is never shown.
    let e = err(data::load(&path, Usage::Training, true));
    assert!(e.contains("fer.csv: no Training rows (1 bad inputs skipped, the first: ") && e.ends_with("fer.csv:3: 1 pixel values, expected 2304)"), "{e}");

    // Every image unreadable: with skip_bad the folder loads nothing, which is refused.
    let dir = temp_dir("data-all-bad");
    write_class_folders(&dir);
    for class in CLASSES {
        std::fs::write(dir.join(class).join("a.png"), b"not a png").unwrap();
    }
    let e = err(data::load(&dir, Usage::Training, true));
    assert!(e.contains("no images (7 bad inputs skipped, the first: ") && e.contains("angry/a.png"), "{e}");
    let e = err(data::load_train_val(&dir, true));
    assert!(e.contains("train: cannot read the folder"), "{e}");
}

#[test]
fn untrainable_sets_are_refused_naming_the_split_and_class() {
    let images = |n: usize| vec![0; n * PIXELS];
    let all = Dataset { images: images(7), labels: (0..7).collect(), ..Default::default() };
    data::check_trainable(&all, &all).unwrap();
    let e = err(data::check_trainable(&Dataset::default(), &all));
    assert!(e.contains("training set has no images"), "{e}");
    let e = err(data::check_trainable(&all, &Dataset::default()));
    assert!(e.contains("validation set has no images"), "{e}");
    let no_disgust_or_sad = Dataset { images: images(5), labels: vec![0, 2, 3, 4, 6], ..Default::default() };
    let e = err(data::check_trainable(&no_disgust_or_sad, &all));
    assert!(e.contains("training set has no images of disgust, sad"), "{e}");
}
