//! FER2013 loading: a folder of class folders (`train/<class>/*.jpg`) or the original
//! `fer2013.csv`. Images are decoded in parallel once and kept as one contiguous u8 tensor.

use crate::error::{file_err, quote_prefix};
use crate::rng::Rng;
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Image side: FER2013 faces are 48x48 grey.
pub const SIDE: usize = 48;
pub const PIXELS: usize = SIDE * SIDE;

/// The fixed class order of every model, file and report: alphabetical, as the folder layout
/// lists them (and as Keras' flow_from_directory numbers them).
pub const CLASSES: [&str; 7] = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];

/// The most probable class of a row of class probabilities (the first of equals): the label a
/// face or image gets.
pub fn most_probable(probabilities: &[f32]) -> usize {
    (0..probabilities.len()).fold(0, |best, i| if probabilities[i] > probabilities[best] { i } else { best })
}

/// fer2013.csv's label numbers (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise,
/// 6 neutral) mapped to positions in [`CLASSES`].
const CSV_LABEL_TO_CLASS: [u8; 7] = [0, 1, 2, 3, 5, 6, 4];

/// How many characters of a bad field an error quotes: enough to recognise it, while a
/// corrupt file's megabyte-long token stays out of the message.
const QUOTE_CHARS: usize = 40;

/// Images as one [n, 48, 48] u8 tensor, with class indices into [`CLASSES`].
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// Bad inputs that were skipped (`skip_bad`), with the reason.
    pub skipped: Vec<String>,
    /// Odd but harmless things in the input, for the caller to show: loading went on past them.
    pub warnings: Vec<String>,
    /// A teacher's probabilities for each image, a row of [`CLASSES`] each, for distillation
    /// ([`Dataset::set_teacher`]). Splitting a dataset drops them.
    pub teacher: Option<Vec<f32>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * PIXELS..(i + 1) * PIXELS]
    }
    pub fn class_counts(&self) -> [usize; 7] {
        let mut counts = [0; 7];
        self.labels.iter().for_each(|&l| counts[l as usize] += 1);
        counts
    }
    /// Gives each image a teacher's probabilities (a row of [`CLASSES`] each, in order), refusing
    /// rows that are not probabilities: a value outside [0, 1] or a row whose sum is not 1.
    pub fn set_teacher(&mut self, probs: Vec<f32>) -> Result<()> {
        let classes = CLASSES.len();
        if probs.len() != self.len() * classes {
            return Err(Error::Invalid(format!("teacher probabilities: {} values for {} images of {classes} classes", probs.len(), self.len())));
        }
        for (i, row) in probs.chunks(classes).enumerate() {
            let sum: f32 = row.iter().sum();
            if row.iter().any(|q| !(0.0..=1.0).contains(q)) || (sum - 1.0).abs() > 1e-3 {
                return Err(Error::Invalid(format!("teacher probabilities of image {i}: {row:?} are not probabilities (sum {sum})")));
            }
        }
        self.teacher = Some(probs);
        Ok(())
    }
    fn push(&mut self, pixels: &[u8], class: u8) {
        self.images.extend_from_slice(pixels);
        self.labels.push(class);
    }
    /// Splits off a seeded random `fraction` of the images (stratified by nothing: FER2013's
    /// classes are large enough that a random tenth keeps their shares); a fraction outside
    /// [0, 1] takes none or all of them.
    pub fn split_off(&mut self, fraction: f64, seed: u64) -> Dataset {
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut order);
        // `as` takes a negative or NaN product to 0.
        let n_off = ((self.len() as f64 * fraction).round() as usize).min(self.len());
        let pick = |idx: &[usize]| Dataset { images: idx.iter().flat_map(|&i| self.image(i).iter().copied()).collect(), labels: idx.iter().map(|&i| self.labels[i]).collect(), ..Default::default() };
        let off = pick(&order[..n_off]);
        let keep = pick(&order[n_off..]);
        let (skipped, warnings) = (std::mem::take(&mut self.skipped), std::mem::take(&mut self.warnings));
        *self = Dataset { skipped, warnings, ..keep };
        off
    }
}

/// Which rows of fer2013.csv to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Usage {
    Training,
    PublicTest,
    PrivateTest,
}

impl Usage {
    const ALL: [Usage; 3] = [Usage::Training, Usage::PublicTest, Usage::PrivateTest];

    fn csv_name(self) -> &'static str {
        match self {
            Usage::Training => "Training",
            Usage::PublicTest => "PublicTest",
            Usage::PrivateTest => "PrivateTest",
        }
    }
    fn from_csv_name(name: &str) -> Option<Usage> {
        Usage::ALL.into_iter().find(|u| u.csv_name() == name)
    }
}

/// Loads a folder of class folders, or a fer2013.csv (then `usage` picks the rows).
/// With `skip_bad`, unreadable or wrongly sized images and bad CSV rows are skipped and listed
/// in `Dataset::skipped`; without it the first one is an error naming the file and line.
/// A load that would give no images is an error naming what is missing.
pub fn load(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset> {
    if path.is_dir() {
        load_folder(path, skip_bad)
    } else if path.is_file() {
        load_csv(path, usage, skip_bad)
    } else {
        Err(file_err(path, "no such folder or CSV file"))
    }
}

/// The training and validation sets in one pass: from a FER2013 folder, its `train/` and
/// `test/` folders; from a CSV, its Training and PublicTest rows. Every skipped input and
/// warning of both is listed once, in the training set's `skipped` and `warnings`; the
/// validation set's are empty.
pub fn load_train_val(path: &Path, skip_bad: bool) -> Result<(Dataset, Dataset)> {
    if path.is_dir() {
        let mut train = load_folder(&path.join("train"), skip_bad)?;
        let mut val = load_folder(&path.join("test"), skip_bad)?;
        train.skipped.append(&mut val.skipped);
        train.warnings.append(&mut val.warnings);
        Ok((train, val))
    } else if path.is_file() {
        let [train, val] = read_csv(path, [Usage::Training, Usage::PublicTest], skip_bad)?;
        Ok((train, val))
    } else {
        Err(file_err(path, "no such folder or CSV file"))
    }
}

/// Refuses, before any work, training that could not learn or be judged: an empty training or
/// validation set, or a class with no training images (`skip_bad` can skip all of them).
pub fn check_trainable(train: &Dataset, val: &Dataset) -> Result<()> {
    for (name, set) in [("training", train), ("validation", val)] {
        if set.is_empty() {
            return Err(Error::Invalid(format!("the {name} set has no images")));
        }
    }
    let missing: Vec<&str> = CLASSES.iter().zip(train.class_counts()).filter(|&(_, n)| n == 0).map(|(&class, _)| class).collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(format!("the training set has no images of {}: a class needs examples to be learnt", missing.join(", "))));
    }
    Ok(())
}

/// Lists a bad input with `skip_bad`, else stops on it.
fn skip_or_fail(err: Error, skip_bad: bool, skipped: &mut Vec<String>) -> Result<()> {
    if skip_bad {
        skipped.push(err.to_string());
        Ok(())
    } else {
        Err(err)
    }
}

/// Refuses an empty set, naming what it lacks. When skipping emptied it, the message carries the
/// first reason, since the caller never sees the `skipped` list of a load that failed.
fn refuse_empty(set: &Dataset, path: &Path, what: &str, skipped: &[String]) -> Result<()> {
    if !set.is_empty() {
        return Ok(());
    }
    let why = skipped.first().map_or(String::new(), |first| format!(" ({} bad inputs skipped, the first: {first})", skipped.len()));
    Err(file_err(path, format!("no {what}{why}")))
}

/// A face image as OpenCV reads it in grey: damaged files are errors, never silently grey rows.
fn decode(path: &Path) -> Result<Vec<u8>> {
    let img = crate::imageio::read_grey(path)?;
    if img.dimensions() != (SIDE as u32, SIDE as u32) {
        return Err(file_err(path, format!("image is {}x{}, expected {SIDE}x{SIDE}", img.width(), img.height())));
    }
    Ok(img.into_raw())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Warnings naming the folders in `dir` that are not class folders: FER+ adds `contempt/`, and
/// the images of a misspelt class folder would otherwise be left out unnoticed.
fn unknown_class_folders(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, format!("cannot read the folder: {e}")))?;
    let mut unknown: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir() && !is_hidden(p) && !p.file_name().is_some_and(|n| CLASSES.iter().any(|c| n == *c))).collect();
    unknown.sort();
    Ok(unknown.iter().map(|p| format!("{}: not a class folder, its files are not used (the classes are {})", p.display(), CLASSES.join(", "))).collect())
}

pub fn load_folder(dir: &Path, skip_bad: bool) -> Result<Dataset> {
    let warnings = unknown_class_folders(dir)?;
    let mut files = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        let class_dir = dir.join(name);
        let entries = std::fs::read_dir(&class_dir).map_err(|e| file_err(&class_dir, format!("missing class folder ({e}); expected one folder per class: {}", CLASSES.join(", "))))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && !is_hidden(p)).collect();
        if paths.is_empty() {
            return Err(file_err(&class_dir, "class folder has no images"));
        }
        paths.sort(); // a stable order, whatever the file system's
        files.extend(paths.into_iter().map(|p| (p, class as u8)));
    }
    let decoded: Vec<_> = files.par_iter().map(|(p, _)| decode(p)).collect();
    let mut data = Dataset { images: Vec::with_capacity(files.len() * PIXELS), warnings, ..Default::default() };
    for ((_, label), image) in files.iter().zip(decoded) {
        match image {
            Ok(pixels) => data.push(&pixels, *label),
            Err(e) => skip_or_fail(e, skip_bad, &mut data.skipped)?,
        }
    }
    refuse_empty(&data, dir, "images", &data.skipped)?;
    Ok(data)
}

/// Parses one `emotion,pixels,Usage` row into (class, pixels, usage). The row is decoded here,
/// not the file as a whole, so that invalid UTF-8 is reported with its line.
fn parse_row(bytes: &[u8]) -> Result<(u8, Vec<u8>, Usage), String> {
    let line = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 (byte {} of the line)", e.valid_up_to() + 1))?;
    let mut fields = line.trim_end_matches('\r').split(',');
    let (Some(emotion), Some(pixels), Some(usage), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
        return Err("expected 3 fields: emotion,pixels,Usage".into());
    };
    let label: usize = emotion.trim().parse().map_err(|_| format!("emotion {} is not a number", quote_prefix(emotion, QUOTE_CHARS)))?;
    let class = *CSV_LABEL_TO_CLASS.get(label).ok_or_else(|| format!("unknown emotion label {label} (expected 0-6)"))?;
    let values: Vec<u8> = pixels.split_ascii_whitespace().map(|v| v.parse::<u8>().map_err(|_| format!("pixel value {} is not 0-255", quote_prefix(v, QUOTE_CHARS)))).collect::<Result<_, _>>()?;
    if values.len() != PIXELS {
        return Err(format!("{} pixel values, expected {PIXELS}", values.len()));
    }
    let usage = Usage::from_csv_name(usage.trim()).ok_or_else(|| format!("unknown Usage {} (expected Training, PublicTest or PrivateTest)", quote_prefix(usage.trim(), QUOTE_CHARS)))?;
    Ok((class, values, usage))
}

pub fn load_csv(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset> {
    let [data] = read_csv(path, [usage], skip_bad)?;
    Ok(data)
}

/// Reads fer2013.csv once into one set per entry of `usages`, each refused when empty. Every
/// row is checked, whatever its usage; bad ones, with `skip_bad`, are listed in the first set.
fn read_csv<const N: usize>(path: &Path, usages: [Usage; N], skip_bad: bool) -> Result<[Dataset; N]> {
    const HEADER: &str = "emotion,pixels,Usage";
    let line_err = |line, reason| Error::Line { path: path.to_path_buf(), line, reason };
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    // Excel and Notepad start their UTF-8 CSVs with a byte-order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut lines = bytes.split(|&b| b == b'\n').zip(1..);
    let header = lines.next().map_or(&[][..], |(l, _)| l);
    let header = String::from_utf8_lossy(header);
    if !header.trim().eq_ignore_ascii_case(HEADER) {
        return Err(line_err(1, format!("expected the header {HEADER}, found {}", quote_prefix(header.trim(), QUOTE_CHARS))));
    }
    let rows: Vec<(&[u8], usize)> = lines.filter(|(l, _)| !l.trim_ascii().is_empty()).collect();
    let parsed: Vec<_> = rows.par_iter().map(|&(l, line)| (line, parse_row(l))).collect();
    let mut sets: [Dataset; N] = std::array::from_fn(|_| Dataset::default());
    let mut skipped = Vec::new();
    for (line, row) in parsed {
        match row {
            Ok((class, pixels, usage)) => {
                if let Some(i) = usages.iter().position(|&u| u == usage) {
                    sets[i].push(&pixels, class);
                }
            }
            Err(reason) => skip_or_fail(line_err(line, reason), skip_bad, &mut skipped)?,
        }
    }
    for (set, usage) in sets.iter().zip(usages) {
        refuse_empty(set, path, &format!("{} rows", usage.csv_name()), &skipped)?;
    }
    if let Some(first) = sets.first_mut() {
        first.skipped = skipped;
    }
    Ok(sets)
}

/// Where FER2013 lives for tests and defaults: `$MIEN_FER2013`, else `../shared/data/fer2013`.
pub fn default_fer_dir() -> PathBuf {
    std::env::var_os("MIEN_FER2013").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data/fer2013"))
}

/// A 48x48 image per class that a small network separates quickly: class c is a bright
/// horizontal band at a class-specific height, plus seeded noise.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut data = Dataset::default();
    for i in 0..n {
        let class = (i % 7) as u8;
        let band = 4 + class as usize * 6;
        for y in 0..48 {
            for _ in 0..48 {
                let base = if (band..band + 5).contains(&y) { 200.0 } else { 40.0 };
                data.images.push((base + rng.uniform(-30.0, 30.0)) as u8);
            }
        }
        data.labels.push(class);
    }
    data
}
