//! FER2013 loading: a folder of class folders (`train/<class>/*.jpg`) or the original
//! `fer2013.csv`. Images are decoded in parallel once and kept as one contiguous u8 tensor.

use crate::rng::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Image side: FER2013 faces are 48x48 grey.
pub const SIDE: usize = 48;
pub const PIXELS: usize = SIDE * SIDE;

/// The fixed class order of every model, file and report: alphabetical, as the folder layout
/// lists them (and as Keras' flow_from_directory numbers them).
pub const CLASSES: [&str; 7] = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];

/// fer2013.csv's label numbers (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise,
/// 6 neutral) mapped to positions in [`CLASSES`].
const CSV_LABEL_TO_CLASS: [u8; 7] = [0, 1, 2, 3, 5, 6, 4];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
}

fn file_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::File { path: path.to_path_buf(), reason: reason.into() }
}

/// Images as one [n, 48, 48] u8 tensor, with class indices into [`CLASSES`].
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// Inputs that were skipped (`skip_bad`), with the reason.
    pub skipped: Vec<String>,
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
    /// Splits off a seeded random `fraction` of the images (stratified by nothing: FER2013's
    /// classes are large enough that a random tenth keeps their shares).
    pub fn split_off(&mut self, fraction: f64, seed: u64) -> Dataset {
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut order);
        let n_off = (self.len() as f64 * fraction).round() as usize;
        let pick = |idx: &[usize]| Dataset {
            images: idx.iter().flat_map(|&i| self.image(i).iter().copied()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            skipped: Vec::new(),
        };
        let off = pick(&order[..n_off]);
        let keep = pick(&order[n_off..]);
        let skipped = std::mem::take(&mut self.skipped);
        *self = Dataset { skipped, ..keep };
        off
    }
}

/// Which rows of fer2013.csv to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Usage {
    Training,
    PublicTest,
    PrivateTest,
}

impl Usage {
    fn csv_name(self) -> &'static str {
        match self {
            Usage::Training => "Training",
            Usage::PublicTest => "PublicTest",
            Usage::PrivateTest => "PrivateTest",
        }
    }
}

/// Loads a folder of class folders, or a fer2013.csv (then `usage` picks the rows).
/// With `skip_bad`, unreadable or wrongly sized images and bad CSV rows are skipped and listed
/// in `Dataset::skipped`; without it the first one is an error naming the file and line.
pub fn load(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset, DataError> {
    if path.is_dir() {
        load_folder(path, skip_bad)
    } else if path.is_file() {
        load_csv(path, usage, skip_bad)
    } else {
        Err(file_err(path, "no such folder or CSV file"))
    }
}

fn decode(path: &Path) -> Result<Vec<u8>, DataError> {
    let img = image::open(path).map_err(|e| file_err(path, format!("cannot decode image: {e}")))?;
    if (img.width(), img.height()) != (SIDE as u32, SIDE as u32) {
        return Err(file_err(path, format!("image is {}x{}, expected {SIDE}x{SIDE}", img.width(), img.height())));
    }
    Ok(img.into_luma8().into_raw())
}

pub fn load_folder(dir: &Path, skip_bad: bool) -> Result<Dataset, DataError> {
    let mut files = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        let class_dir = dir.join(name);
        let entries = std::fs::read_dir(&class_dir).map_err(|e| file_err(&class_dir, format!("missing class folder ({e}); expected one folder per class: {}", CLASSES.join(", "))))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        if paths.is_empty() {
            return Err(file_err(&class_dir, "class folder has no images"));
        }
        paths.sort(); // a stable order, whatever the file system's
        files.extend(paths.into_iter().map(|p| (p, class as u8)));
    }
    let decoded: Vec<_> = files.par_iter().map(|(p, _)| decode(p)).collect();
    let mut data = Dataset { images: Vec::with_capacity(files.len() * PIXELS), ..Default::default() };
    for ((_, label), image) in files.iter().zip(decoded) {
        match image {
            Ok(pixels) => {
                data.images.extend_from_slice(&pixels);
                data.labels.push(*label);
            }
            Err(e) if skip_bad => data.skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(data)
}

/// Parses one `emotion,pixels,Usage` row into (class, pixels, usage).
fn parse_row(line: &str) -> Result<(u8, Vec<u8>, &str), String> {
    let mut fields = line.trim_end_matches('\r').split(',');
    let (Some(emotion), Some(pixels), Some(usage), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
        return Err("expected 3 fields: emotion,pixels,Usage".into());
    };
    let label: usize = emotion.trim().parse().map_err(|_| format!("emotion {emotion:?} is not a number"))?;
    let class = *CSV_LABEL_TO_CLASS.get(label).ok_or_else(|| format!("unknown emotion label {label} (expected 0-6)"))?;
    let values: Vec<u8> = pixels
        .split_ascii_whitespace()
        .map(|v| v.parse::<u8>().map_err(|_| format!("pixel value {v:?} is not 0-255")))
        .collect::<Result<_, _>>()?;
    if values.len() != PIXELS {
        return Err(format!("{} pixel values, expected {PIXELS}", values.len()));
    }
    Ok((class, values, usage.trim()))
}

pub fn load_csv(path: &Path, usage: Usage, skip_bad: bool) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim().eq_ignore_ascii_case("emotion,pixels,usage") => {}
        _ => return Err(DataError::Line { path: path.to_path_buf(), line: 1, reason: "expected the header emotion,pixels,Usage".into() }),
    }
    let rows: Vec<(usize, &str)> = lines.filter(|(_, l)| !l.trim().is_empty()).collect();
    let parsed: Vec<_> = rows.par_iter().map(|(i, l)| (*i + 1, parse_row(l))).collect();
    let mut data = Dataset::default();
    for (line, row) in parsed {
        match row {
            Ok((class, pixels, u)) => {
                if u == usage.csv_name() {
                    data.images.extend_from_slice(&pixels);
                    data.labels.push(class);
                }
            }
            Err(reason) if skip_bad => data.skipped.push(format!("{}:{line}: {reason}", path.display())),
            Err(reason) => return Err(DataError::Line { path: path.to_path_buf(), line, reason }),
        }
    }
    if data.is_empty() {
        return Err(file_err(path, format!("no {} rows", usage.csv_name())));
    }
    Ok(data)
}

/// Where FER2013 lives for tests and defaults: `$MIEN_FER2013`, else `../shared/data/fer2013`.
pub fn default_fer_dir() -> PathBuf {
    std::env::var_os("MIEN_FER2013").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data/fer2013"))
}
