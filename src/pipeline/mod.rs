//! Faces and their expressions in one image: detection (YuNet on the labeller's device, or a
//! Haar cascade, on the GPU when the model runs there), 48x48 crops (aligned by YuNet's
//! landmarks, or the square around the box), the expression model (its probabilities
//! averaged over the test-time views chosen), and the per-image report that `mien detect
//! --json` writes. The command line, the benchmarks and later front ends all go through
//! [`Labeller`].

#[cfg(feature = "video")]
pub mod video;

use crate::align;
use crate::augment::Tta;
use crate::data::{self, CLASSES};
#[cfg(feature = "plot")]
use crate::detect::annotate::{self, Annotation};
use crate::detect::gpu::GpuDetector;
use crate::detect::yunet::{FaceBox, YuNet, YuNetModel, YuNetParams};
use crate::detect::{cpu, Cascade, DetectParams, Rect};
use crate::error::{Error, Result};
use crate::gpu::{append_timeline, Gpu, PassTiming};
use crate::kernels::conv2d::Precision;
use crate::kernels::face_crop::{self, CropMap};
use crate::nn::{Backend, Ensemble};
use image::{GrayImage, RgbImage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The weights of the default expression models, relative to the repository: an ensemble, each
/// face labelled by the mean of their probabilities. Videos and the web page take the first
/// alone (tools/web-build.sh reads this line).
pub const SHIPPED_WEIGHTS: &[&str] = &["data/models/vgg.safetensors", "data/models/vgg_base.safetensors", "data/models/vgg_seed7.safetensors"];

/// An expression label: the most probable class and every class's probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub class: usize,
    pub probabilities: Vec<f32>,
}

/// A face found in an image, labelled when the labeller has a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Face {
    pub rect: Rect,
    /// What a CNN detector adds: its confidence and the five landmarks (eyes, nose tip, mouth
    /// corners). A Haar cascade gives neither.
    pub detection: Option<Detection>,
    pub label: Option<Label>,
}

/// A CNN detector's confidence in a face and its landmarks, in image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// The text drawn beside the face: its class and probability, or just "face".
    pub fn caption(&self) -> String {
        self.label.as_ref().map_or("face".to_string(), |l| format!("{} {:.2}", CLASSES[l.class], l.probabilities[l.class]))
    }
}

/// Which detector finds the faces, with its settings.
pub enum DetectorChoice {
    /// YuNet, a CNN that also gives a score and five landmarks a face, on images shrunk as
    /// `size` says (the boxes scaled back); faces narrower or shorter than `min_size` pixels
    /// are dropped.
    YuNet { params: YuNetParams, min_size: u32, size: DetectSize },
    /// An OpenCV Haar cascade, with the parameters of OpenCV's `detectMultiScale`.
    Haar { cascade: Cascade, params: DetectParams },
}

/// How large an image YuNet looks at: shrinking a video's frames makes them cost a fraction as
/// much, and its faces are rarely small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectSize {
    /// The image as it is.
    Full,
    /// Shrunk, when larger, so that its longer side is this many pixels (0: as it is).
    AtMost(u32),
    /// A video frame: shrunk to half its longer side, kept within [`VIDEO_DETECT_SIDES`]. That
    /// finds faces down to about 20 px of frames up to 720p and 30 px of 1080p, at a quarter
    /// of the cost or less.
    Video,
}

/// The longer sides [`DetectSize::Video`] keeps to: no smaller, so that a small frame's faces
/// are not shrunk below what YuNet finds, and no larger, so that large frames cost no more.
pub const VIDEO_DETECT_SIDES: std::ops::RangeInclusive<u32> = 320..=640;

impl DetectSize {
    /// The longer side to detect at for an image whose longer side is `longer`, when smaller.
    fn shrunk_side(self, longer: u32) -> Option<u32> {
        let side = match self {
            DetectSize::Full => return None,
            DetectSize::AtMost(side) => side,
            DetectSize::Video => (longer / 2).clamp(*VIDEO_DETECT_SIDES.start(), *VIDEO_DETECT_SIDES.end()),
        };
        (side > 0 && longer > side).then_some(side)
    }
}

/// Where faces are found: YuNet on the labeller's device, the Haar cascade's CPU reference, or
/// its GPU detector (which gives the same rectangles) with the cascade kept for images too
/// large for the device.
enum Detector<'g, B: Backend> {
    YuNet { net: Box<YuNet<B>>, params: YuNetParams, min_size: u32, size: DetectSize },
    Cpu(Cascade, DetectParams),
    Gpu(Box<GpuDetector<'g>>, Cascade, DetectParams),
}

/// Finds faces and labels their expressions, on one backend.
pub struct Labeller<'g, B: Backend> {
    detector: Detector<'g, B>,
    classifier: Classifier<B>,
    /// What the last calls did differently from what was asked (a fallback to the CPU), for
    /// the caller to report with the image's name.
    warnings: Vec<String>,
}

/// Cuts faces out and labels them: the expression model and how it sees a face.
struct Classifier<B: Backend> {
    backend: B,
    models: Option<Ensemble<B>>,
    tta: Tta,
    /// Whether faces with landmarks are aligned before they are classified (see [`crate::align`]).
    align: bool,
}

impl<'g, B: Backend> Labeller<'g, B> {
    /// A labeller finding faces with `detector` (a Haar cascade on `gpu` when given) and
    /// labelling them with the models of the weights files at `weights` (each built as its
    /// file's metadata declares); without weights it only finds faces. Each face is labelled by
    /// the mean probabilities of the views `tta` takes of its crop, over the models, the crop
    /// aligned by its landmarks when `align` is set and the detector gives landmarks.
    pub fn new(backend: B, gpu: Option<&'g Gpu>, detector: DetectorChoice, weights: &[PathBuf], tta: Tta, align: bool) -> Result<Self> {
        let yunet = match detector {
            DetectorChoice::YuNet { .. } => Some(Arc::new(YuNetModel::shipped()?)),
            DetectorChoice::Haar { .. } => None,
        };
        let models = if weights.is_empty() { None } else { Some(Ensemble::load(&backend, weights)?) };
        Self::from_parts(backend, gpu, detector, yunet, models, tta, align)
    }

    /// [`Labeller::new`] from loaded parts, for front ends without files (the browser):
    /// `yunet` is the detector's network, needed when `detector` is YuNet.
    pub fn from_parts(backend: B, gpu: Option<&'g Gpu>, detector: DetectorChoice, yunet: Option<Arc<YuNetModel>>, models: Option<Ensemble<B>>, tta: Tta, align: bool) -> Result<Self> {
        if let Some(classes) = models.as_ref().map(Ensemble::classes).filter(|&n| n != CLASSES.len()) {
            return Err(Error::Invalid(format!("the expression model scores {classes} classes; labelling faces needs FER2013's {} ({})", CLASSES.len(), CLASSES.join(", "))));
        }
        let detector = match detector {
            DetectorChoice::YuNet { params, min_size, size } => {
                params.validate()?;
                let yunet = yunet.ok_or_else(|| Error::Invalid("the YuNet detector was chosen without its network".into()))?;
                Detector::YuNet { net: Box::new(YuNet::new(backend.another(), yunet)?), params, min_size, size }
            }
            DetectorChoice::Haar { cascade, params } => {
                params.validate()?;
                match gpu.map(|g| GpuDetector::new(g, &cascade)) {
                    None => Detector::Cpu(cascade, params),
                    Some(Ok(gpu_detector)) => {
                        gpu_detector.set_profiling(backend.profiling());
                        Detector::Gpu(Box::new(gpu_detector), cascade, params)
                    }
                    // A cascade the GPU cannot encode exactly still runs on the CPU reference.
                    Some(Err(e)) => {
                        log::warn!("the GPU detector cannot run this cascade ({e}); detecting on the CPU");
                        Detector::Cpu(cascade, params)
                    }
                }
            }
        };
        Ok(Labeller { detector, classifier: Classifier { backend, models, tta, align }, warnings: Vec::new() })
    }

    /// The faces in an image (`rgb`, and `grey` as OpenCV converts it), labelled when there is
    /// a model.
    pub async fn faces_async(&mut self, rgb: &RgbImage, grey: &GrayImage) -> Result<Vec<Face>> {
        let mut faces = self.detector.find(rgb, grey, &mut self.warnings).await?;
        self.classifier.label(grey, &mut faces, &mut self.warnings).await?;
        Ok(faces)
    }

    /// The 48x48 crops of `faces` (found in `grey`) as this labeller's model sees them; see
    /// [`face_crops`].
    pub fn face_crops(&self, grey: &GrayImage, faces: &[Face]) -> Result<Vec<u8>> {
        face_crops(grey, faces, self.classifier.align)
    }

    /// [`Labeller::faces_async`], waited for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn faces(&mut self, rgb: &RgbImage, grey: &GrayImage) -> Result<Vec<Face>> {
        pollster::block_on(self.faces_async(rgb, grey))
    }

    /// On a profiling backend, the GPU passes of the calls since the last time they were
    /// taken: detection's, then classification's, laid end to end.
    pub async fn take_timings_async(&mut self) -> Result<Vec<PassTiming>> {
        let mut timeline = match &self.detector {
            Detector::YuNet { net, .. } => net.backend().take_timings_async().await?,
            Detector::Gpu(gpu_detector, ..) => gpu_detector.take_timings(),
            Detector::Cpu(..) => Vec::new(),
        };
        append_timeline(&mut timeline, self.classifier.backend.take_timings_async().await?);
        Ok(timeline)
    }

    /// Sets what the expression models and YuNet multiply in on the CPU backend (see
    /// [`Precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        if let Some(models) = &mut self.classifier.models {
            models.models_mut().iter_mut().for_each(|m| m.precision = precision);
        }
        if let Detector::YuNet { net, .. } = &mut self.detector {
            net.set_precision(precision);
        }
    }

    /// Sets the views of each face the labels average (see [`Tta`]).
    pub fn set_tta(&mut self, tta: Tta) {
        self.classifier.tta = tta;
    }

    /// Keeps the first `n` expression models (at least one) and drops the rest.
    pub fn keep_models(&mut self, n: usize) {
        if let Some(models) = &mut self.classifier.models {
            models.truncate(n);
        }
    }

    /// Sets the size YuNet looks at images (see [`DetectSize`]); Haar has none.
    pub fn set_detect_size(&mut self, to: DetectSize) {
        if let Detector::YuNet { size, .. } = &mut self.detector {
            *size = to;
        }
    }

    /// The warnings of the calls since the last time they were taken.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

impl<B: Backend> Detector<'_, B> {
    /// The faces in an image (`rgb`, and `grey` as OpenCV converts it), not yet labelled; what
    /// was done differently from what was asked goes to `warnings`.
    async fn find(&mut self, rgb: &RgbImage, grey: &GrayImage, warnings: &mut Vec<String>) -> Result<Vec<Face>> {
        let mut found = self.find_together(&[(rgb, grey)], warnings).await?;
        Ok(found.pop().expect("one list for one image"))
    }

    /// [`Detector::find`] for each of `images` (a video's frames): YuNet runs those of one
    /// size through its network together (see [`YuNet::detect_batch_async`]).
    async fn find_together(&mut self, images: &[(&RgbImage, &GrayImage)], warnings: &mut Vec<String>) -> Result<Vec<Vec<Face>>> {
        let face = |rect: Rect, detection: Option<Detection>| Face { rect, detection, label: None };
        let haar = |rects: Vec<Rect>| rects.into_iter().map(|r| face(r, None)).collect();
        let mut found = Vec::with_capacity(images.len());
        match self {
            Detector::YuNet { net, params, min_size, size } => {
                // A live stream may change size mid-way: each run of one size goes together.
                for run in images.chunk_by(|a, b| a.0.dimensions() == b.0.dimensions()) {
                    let (width, height) = run[0].0.dimensions();
                    let shrunk: Vec<RgbImage>;
                    let (seen, scale): (Vec<&RgbImage>, f32) = match size.shrunk_side(width.max(height)) {
                        Some(side) => {
                            let scale = width.max(height) as f32 / side as f32;
                            let (w, h) = ((width as f32 / scale).round().max(1.0) as u32, (height as f32 / scale).round().max(1.0) as u32);
                            shrunk = run.iter().map(|(rgb, _)| shrink(rgb, w, h)).collect();
                            (shrunk.iter().collect(), width as f32 / w as f32)
                        }
                        None => (run.iter().map(|&(rgb, _)| rgb).collect(), 1.0),
                    };
                    let faces = net.detect_batch_async(&seen, params).await;
                    warnings.extend(net.take_warnings());
                    let min = *min_size as f32;
                    for faces in faces? {
                        found.push(
                            faces
                                .into_iter()
                                .map(|f| f.scaled(scale))
                                .filter(|f| f.w >= min && f.h >= min)
                                .map(|f| face(box_rect(&f), Some(Detection { score: f.score, landmarks: f.landmarks })))
                                .collect(),
                        );
                    }
                }
            }
            Detector::Cpu(cascade, params) => {
                for (_, grey) in images {
                    found.push(cpu::detect_multi_scale(cascade, grey, params).map(haar)?);
                }
            }
            Detector::Gpu(gpu, cascade, params) => {
                for (_, grey) in images {
                    found.push(match gpu.detect_multi_scale_async(grey, params).await {
                        // Larger than the device's buffers: the CPU gives the same rectangles.
                        Err(e @ Error::TooLarge { .. }) => {
                            warnings.push(format!("{e}; detecting on the CPU"));
                            cpu::detect_multi_scale(cascade, grey, params).map(haar)
                        }
                        found => found.map(haar),
                    }?);
                }
            }
        }
        Ok(found)
    }
}

impl<B: Backend> Classifier<B> {
    /// Labels each face of `grey` (none without a model): the faces are cut to the model's
    /// 48x48 and classified as one batch.
    async fn label(&mut self, grey: &GrayImage, faces: &mut [Face], warnings: &mut Vec<String>) -> Result<()> {
        self.label_together(&mut [(grey, faces)], warnings).await
    }

    /// [`Classifier::label`] for the faces of several frames, all in one batch.
    async fn label_together(&mut self, frames: &mut [(&GrayImage, &mut [Face])], warnings: &mut Vec<String>) -> Result<()> {
        let count: usize = frames.iter().map(|(_, faces)| faces.len()).sum();
        let Some(models) = self.models.as_mut().filter(|_| count > 0) else {
            return Ok(());
        };
        let backend = &self.backend;
        let mut parts = Vec::with_capacity(frames.len());
        for (grey, faces) in frames.iter().filter(|(_, faces)| !faces.is_empty()) {
            parts.push(cut_crops(backend, grey, faces, self.align, warnings)?);
        }
        let crops = match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => backend.join_faces(&parts)?,
        };
        let probs = models.predict_faces_async(backend, &crops, count, self.tta).await?;
        for (face, p) in frames.iter_mut().flat_map(|(_, faces)| faces.iter_mut()).zip(probs.chunks(CLASSES.len())) {
            face.label = Some(Label { class: data::most_probable(p), probabilities: p.to_vec() });
        }
        Ok(())
    }
}

/// The 48x48 crops of `faces` in `grey` for the expression model, on `backend`: aligned by
/// their landmarks when `align` is set and every face has them, else the square around each box.
fn cut_crops<B: Backend>(backend: &B, grey: &GrayImage, faces: &[Face], align: bool, warnings: &mut Vec<String>) -> Result<B::Faces> {
    let Some(maps) = aligned_maps(faces, align) else {
        return backend.faces_from_bytes(&square_crops(grey, faces));
    };
    // Cut on the backend: on a GPU the crops stay on the device for the model.
    match backend.cut_faces(grey.as_raw(), (grey.width() as usize, grey.height() as usize), &maps) {
        // Larger than the device's buffers: the CPU cuts the same crops.
        Err(e @ Error::TooLarge { .. }) => {
            warnings.push(format!("{e}; cutting the face crops on the CPU"));
            backend.faces_from_bytes(&cut_on_cpu(grey, &maps)?)
        }
        crops => crops,
    }
}

/// Each face's map from its landmarks to an upright crop, when `align` is set and every face
/// has landmarks.
fn aligned_maps(faces: &[Face], align: bool) -> Option<Vec<CropMap>> {
    faces.iter().map(|f| f.detection.filter(|_| align).map(|d| align::aligned(&d.landmarks))).collect()
}

/// The 48x48 crops (row-major bytes, one after another) of `faces` in `grey` as the expression
/// model sees them, cut on the CPU: aligned by their landmarks when `align` is set and every
/// face has them, else the square around each box.
pub fn face_crops(grey: &GrayImage, faces: &[Face], align: bool) -> Result<Vec<u8>> {
    match aligned_maps(faces, align) {
        Some(maps) => cut_on_cpu(grey, &maps),
        None => Ok(square_crops(grey, faces)),
    }
}

/// The 48x48 crops `maps` cut from `grey`, by the CPU reference of the `face_crop` kernel.
fn cut_on_cpu(grey: &GrayImage, maps: &[CropMap]) -> Result<Vec<u8>> {
    let mut crops = vec![0; maps.len() * data::PIXELS];
    face_crop::face_crops_cpu(grey.as_raw(), (grey.width() as usize, grey.height() as usize), maps, &mut crops)?;
    Ok(crops)
}

/// The square around each face's box, resized to 48x48 as OpenCV's `resize` does: the crops of
/// the original report's Haar pipeline.
fn square_crops(grey: &GrayImage, faces: &[Face]) -> Vec<u8> {
    let mut crops = Vec::with_capacity(faces.len() * data::PIXELS);
    for face in faces {
        let r = square_inside(&face.rect, grey.dimensions());
        let crop = image::imageops::crop_imm(grey, r.x as u32, r.y as u32, r.w as u32, r.h as u32).to_image();
        crops.extend_from_slice(cpu::resize_exact(&crop, data::SIDE as u32, data::SIDE as u32).as_raw());
    }
    crops
}

/// `rgb` shrunk to `width` x `height` (both no larger), each pixel the mean of the block of
/// source pixels it covers, rows in parallel. Each output row first sums its block's source rows
/// column by column (one pass over contiguous bytes), then each pixel sums its columns.
fn shrink(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    use rayon::prelude::*;
    let (sw, sh) = (rgb.width() as usize, rgb.height() as usize);
    let (w, h) = (width as usize, height as usize);
    let columns: Vec<(usize, usize)> = (0..w).map(|x| block_span(x, w, sw)).collect();
    let src = rgb.as_raw();
    let mut out = vec![0u8; w * h * 3];
    out.par_chunks_mut(w * 3).enumerate().for_each_init(
        || vec![0u32; sw * 3],
        |sums, (y, row)| {
            let (y0, y1) = block_span(y, h, sh);
            sums.fill(0);
            for source_row in src[y0 * sw * 3..y1 * sw * 3].chunks_exact(sw * 3) {
                sums.iter_mut().zip(source_row).for_each(|(s, &v)| *s += v as u32);
            }
            let mut divisor = Divisor::new(1);
            for (pixel, &(x0, x1)) in row.chunks_exact_mut(3).zip(&columns) {
                let n = ((y1 - y0) * (x1 - x0)) as u64;
                if divisor.n != n {
                    divisor = Divisor::new(n);
                }
                let mut sum = [0u64; 3];
                for p in sums[x0 * 3..x1 * 3].chunks_exact(3) {
                    sum.iter_mut().zip(p).for_each(|(s, &v)| *s += v as u64);
                }
                pixel.iter_mut().zip(sum).for_each(|(p, s)| *p = divisor.divide(s + n / 2) as u8);
            }
        },
    );
    RgbImage::from_raw(width, height, out).expect("width x height x 3 bytes")
}

/// Division by `n` as a multiplication and a shift: an integer division per channel per pixel
/// would take most of [`shrink`]'s time. With `m = ceil(2^40 / n)`, `floor(x * m / 2^40)` is
/// `floor(x / n)` for every `x <= 2^40 / n`, which covers the sums of blocks of up to 2^16
/// bytes (at most 256 n); larger blocks (a tiny `--detect-size` of a big image) divide.
struct Divisor {
    n: u64,
    /// 0 for blocks too large to multiply.
    m: u64,
}

impl Divisor {
    fn new(n: u64) -> Self {
        Divisor { n, m: if n <= 1 << 16 { (1u64 << 40).div_ceil(n) } else { 0 } }
    }
    fn divide(&self, x: u64) -> u64 {
        if self.m == 0 {
            x / self.n
        } else {
            (x * self.m) >> 40
        }
    }
}

/// The source pixels `[first, end)` that output pixel `i` of `n` covers along a side of `of`
/// pixels (at least one).
fn block_span(i: usize, n: usize, of: usize) -> (usize, usize) {
    let first = i * of / n;
    (first, ((i + 1) * of / n).max(first + 1).min(of))
}

/// A YuNet box as whole pixels: its corners rounded.
fn box_rect(f: &FaceBox) -> Rect {
    let (x0, y0) = (f.x.round() as i32, f.y.round() as i32);
    Rect { x: x0, y: y0, w: (f.x + f.w).round() as i32 - x0, h: (f.y + f.h).round() as i32 - y0 }
}

/// The square around `r`'s centre with `r`'s longer side, moved and if need be shrunk to lie
/// inside an image of `(width, height)`: the expression model reads square faces, and a CNN
/// detector's boxes are neither square nor always inside the image. Haar boxes, square and
/// inside, come back unchanged.
fn square_inside(r: &Rect, (width, height): (u32, u32)) -> Rect {
    let side = r.w.max(r.h).min(width as i32).min(height as i32).max(1);
    let (cx, cy) = (r.x + r.w / 2, r.y + r.h / 2);
    let x = (cx - side / 2).clamp(0, width as i32 - side);
    let y = (cy - side / 2).clamp(0, height as i32 - side);
    Rect { x, y, w: side, h: side }
}

/// Draws each face's box and caption on `rgb`.
#[cfg(feature = "plot")]
pub fn annotate(rgb: &mut RgbImage, faces: &[Face]) -> Result<()> {
    annotate_captioned(rgb, faces.iter().map(|f| (f, f.caption())))
}

/// Draws each face's box with the caption given for it.
#[cfg(feature = "plot")]
pub fn annotate_captioned<'a>(rgb: &mut RgbImage, faces: impl IntoIterator<Item = (&'a Face, String)>) -> Result<()> {
    let drawn: Vec<Annotation> = faces.into_iter().map(|(f, label)| Annotation { rect: f.rect, label, landmarks: f.detection.map(|d| d.landmarks) }).collect();
    annotate::draw(rgb, &drawn)
}

/// One face as `mien detect --json` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct FaceReport {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
    /// The detector's confidence (CNN detectors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Right eye, left eye, nose tip, right and left mouth corner (CNN detectors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<[[f32; 2]; 5]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emotion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// The file the face's 48x48 crop was written to, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}

/// One image as `mien detect --json` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub width: u32,
    pub height: u32,
    /// The annotated copy written for this image, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotated: Option<String>,
    pub faces: Vec<FaceReport>,
}

impl ImageReport {
    pub fn new(image: String, (width, height): (u32, u32), faces: &[Face]) -> Self {
        let faces = faces
            .iter()
            .map(|f| FaceReport {
                x: f.rect.x,
                y: f.rect.y,
                w: f.rect.w,
                h: f.rect.h,
                score: f.detection.map(|d| d.score),
                landmarks: f.detection.map(|d| d.landmarks),
                emotion: f.label.as_ref().map(|l| CLASSES[l.class].to_string()),
                probabilities: f.label.as_ref().map(|l| CLASSES.iter().map(|c| c.to_string()).zip(l.probabilities.iter().copied()).collect()),
                crop: None,
            })
            .collect();
        ImageReport { image, width, height, annotated: None, faces }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn shrinking_averages_each_block_of_source_pixels() {
        // The mean of each pixel's block, rounded half up, written plainly.
        let naive = |rgb: &RgbImage, w: u32, h: u32| {
            let (sw, sh) = (rgb.width() as usize, rgb.height() as usize);
            RgbImage::from_fn(w, h, |x, y| {
                let ((x0, x1), (y0, y1)) = (block_span(x as usize, w as usize, sw), block_span(y as usize, h as usize, sh));
                let n = ((x1 - x0) * (y1 - y0)) as u32;
                image::Rgb(std::array::from_fn(|c| {
                    let sum: u32 = (y0..y1).flat_map(|sy| (x0..x1).map(move |sx| (sx, sy))).map(|(sx, sy)| rgb.get_pixel(sx as u32, sy as u32)[c] as u32).sum();
                    ((sum + n / 2) / n) as u8
                }))
            })
        };
        let rgb = RgbImage::from_fn(641, 479, |x, y| image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y / 3) as u8]));
        // Blocks of 4 pixels up to the whole image: (3, 2) takes blocks of about 51,000 pixels,
        // still divided by multiplying; (1, 1) one of 307,039, by dividing.
        for (w, h) in [(320, 240), (213, 160), (640, 479), (3, 2), (1, 1), (641, 1)] {
            assert_eq!(shrink(&rgb, w, h), naive(&rgb, w, h), "{w}x{h}");
        }
    }

    /// Frames of two sizes (a live stream that changes size) each get the faces they get alone.
    #[test]
    fn frames_of_two_sizes_found_together_each_find_their_own_faces() {
        let photo = crate::imageio::read_rgb(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/photos/grace_hopper.jpg"))).unwrap();
        let small = image::imageops::resize(&photo, photo.width() * 2 / 3, photo.height() * 2 / 3, image::imageops::FilterType::Triangle);
        let frames = [&photo, &small, &small, &photo];
        let greys = frames.map(crate::imageio::grey_of);
        let pairs: Vec<(&RgbImage, &GrayImage)> = frames.into_iter().zip(&greys).collect();
        let choice = DetectorChoice::YuNet { params: YuNetParams::DETECT, min_size: 0, size: DetectSize::AtMost(400) };
        let mut labeller = Labeller::new(crate::nn::Cpu, None, choice, &[], Tta::None, true).unwrap();
        let mut warnings = Vec::new();
        let together = pollster::block_on(labeller.detector.find_together(&pairs, &mut warnings)).unwrap();
        let alone: Vec<Vec<Face>> = pairs.iter().map(|&(rgb, grey)| pollster::block_on(labeller.detector.find(rgb, grey, &mut warnings)).unwrap()).collect();
        assert_eq!(together.len(), 4);
        for (got, want) in together.iter().zip(&alone) {
            assert_eq!(got.len(), 1);
            assert_eq!(got.iter().map(|f| f.rect).collect::<Vec<_>>(), want.iter().map(|f| f.rect).collect::<Vec<_>>());
        }
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn video_frames_are_shrunk_to_half_within_the_video_sides() {
        let side = |size: DetectSize, longer| size.shrunk_side(longer);
        assert_eq!(side(DetectSize::Video, 1920), Some(640));
        assert_eq!(side(DetectSize::Video, 1280), Some(640));
        assert_eq!(side(DetectSize::Video, 640), Some(320));
        assert_eq!(side(DetectSize::Video, 480), Some(320));
        assert_eq!(side(DetectSize::Video, 320), None);
        assert_eq!(side(DetectSize::AtMost(0), 4000), None);
        assert_eq!(side(DetectSize::AtMost(500), 499), None);
        assert_eq!(side(DetectSize::AtMost(500), 501), Some(500));
        assert_eq!(side(DetectSize::Full, 8000), None);
    }
}
