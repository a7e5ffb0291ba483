//! The CPU reference detector, with OpenCV 4's `detectMultiScale` semantics for Haar cascades:
//! a pyramid of bit-exact bilinear resizes, integral and squared-integral images, windows
//! normalised by their standard deviation, stumps or trees per stage, and rectangle grouping.
//! docs/opencv-haar-semantics.md sets out each rule and why it is needed for identical output.

use super::cascade::{Cascade, Feature};
use super::group::{group_rectangles, Rect};
use crate::error::{Error, Result};
use image::GrayImage;
use rayon::prelude::*;

/// The most pyramid levels one detection may scan. OpenCV sets no limit, but a scale factor just
/// above 1 makes the pyramid endless in practice (1.0000001 means millions of levels, each a
/// resize and a scan of the image); at 1.01 a 24-pixel window reaches 10,000 pixels in 607.
pub const MAX_LEVELS: usize = 1000;

/// OpenCV's `detectMultiScale` parameters, with its defaults.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DetectParams {
    pub scale_factor: f64,
    pub min_neighbors: usize,
    /// Smallest window to report (width, height); (0, 0) for no limit.
    pub min_size: (u32, u32),
    /// Largest window to report; None for the image size.
    pub max_size: Option<(u32, u32)>,
}

impl Default for DetectParams {
    fn default() -> Self {
        DetectParams { scale_factor: 1.1, min_neighbors: 3, min_size: (0, 0), max_size: None }
    }
}

/// OpenCV's cvRound for floats: to nearest, ties to even.
pub(crate) fn round_f32(v: f32) -> i32 {
    v.round_ties_even() as i32
}

impl DetectParams {
    /// Refuses settings that make detection meaningless or endless whatever the image: a scale
    /// factor that is not a finite number above 1 never grows the window (or grows it without
    /// end), and a minimum size above the maximum size can report nothing.
    pub fn validate(&self) -> Result<()> {
        let f = self.scale_factor;
        if !(f.is_finite() && f > 1.0) {
            return Err(Error::Invalid(format!("scale factor {f}: it must be a finite number above 1, the growth of the window from one pyramid level to the next")));
        }
        if let Some((w, h)) = self.max_size.filter(|m| m.0 > 0 && m.1 > 0) {
            let (min_w, min_h) = self.min_size;
            if min_w > w || min_h > h {
                return Err(Error::Invalid(format!("minimum size {min_w}x{min_h} is larger than the maximum size {w}x{h}: no window could be reported")));
            }
        }
        Ok(())
    }

    /// [`DetectParams::validate`], and a pyramid of at most [`MAX_LEVELS`] levels for a cascade
    /// `window` on an image of `size`; the error gives the smallest scale factor (to 6 decimals)
    /// that would do.
    pub fn validate_for(&self, window: (u32, u32), size: (u32, u32)) -> Result<()> {
        self.validate()?;
        let limit = self.limit(size);
        if pyramid(window, limit, self.scale_factor).nth(MAX_LEVELS).is_none() {
            return Ok(());
        }
        // Level MAX_LEVELS must outgrow the limit: f^MAX_LEVELS above the growth from the window
        // to the limit, then up in steps of 1e-6 to absorb the rounding of repeated products.
        let growth = ((limit.0 as f64 + 0.5) / window.0 as f64).min((limit.1 as f64 + 0.5) / window.1 as f64);
        let mut micros = (growth.powf(1.0 / MAX_LEVELS as f64) * 1e6).ceil();
        while pyramid(window, limit, micros / 1e6).nth(MAX_LEVELS).is_some() {
            micros += 1.0;
        }
        let levels = (growth.ln() / (self.scale_factor - 1.0).ln_1p()).floor() + 1.0;
        Err(Error::Invalid(format!(
            "scale factor {}: about {levels:.0} pyramid levels from the {}x{} window to {}x{}, over the limit of {MAX_LEVELS} (OpenCV sets none, but each level is a resize and a scan of the image); use a scale factor of at least {:.6}",
            self.scale_factor,
            window.0,
            window.1,
            limit.0,
            limit.1,
            micros / 1e6
        )))
    }

    /// The largest window scanned on an image of `size`: the image, or the maximum size within
    /// it (OpenCV takes a size with a zero side for none).
    fn limit(&self, (width, height): (u32, u32)) -> (u32, u32) {
        let (max_w, max_h) = self.max_size.filter(|m| m.0 > 0 && m.1 > 0).unwrap_or((width, height));
        (max_w.min(width), max_h.min(height))
    }
}

/// The pyramid's factors with their windows, as OpenCV grows them: by repeated f64
/// multiplication from 1 until the window no longer fits within `limit`. Endless unless
/// `scale_factor` is finite and above 1.
fn pyramid(window: (u32, u32), limit: (u32, u32), scale_factor: f64) -> impl Iterator<Item = (f64, (u32, u32))> {
    std::iter::successors(Some(1.0f64), move |f| Some(f * scale_factor))
        .map(move |f| (f, ((window.0 as f64 * f).round_ties_even() as u32, (window.1 as f64 * f).round_ties_even() as u32)))
        .take_while(move |(_, win)| win.0 <= limit.0 && win.1 <= limit.1)
}

/// The pyramid's scale factors, as OpenCV lists them: windows below the minimum size are
/// skipped, the factor growing on. Kept as f32, as OpenCV stores them. `p` must be validated.
fn scales(cascade: &Cascade, size: (u32, u32), p: &DetectParams) -> Vec<f32> {
    pyramid(cascade.window, p.limit(size), p.scale_factor).filter(|(_, win)| win.0 >= p.min_size.0 && win.1 >= p.min_size.1).map(|(f, _)| f as f32).collect()
}

/// The size of the image at scale `s`: an f32 division, as OpenCV does it (f64 differs for
/// some sizes).
fn scaled_size((width, height): (u32, u32), s: f32) -> (u32, u32) {
    (round_f32(width as f32 / s) as u32, round_f32(height as f32 / s) as u32)
}

/// The taps of OpenCV's INTER_LINEAR_EXACT along one axis: for each destination index, the
/// source index and the next pixel's weight in 1/256. Source positions are
/// (d + 0.5) * scale - 0.5 in f64; positions before the first or past the last pixel take the
/// edge (weight 0).
pub fn resize_taps(src_len: u32, dst_len: u32) -> Vec<(usize, u32)> {
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    (0..dst_len)
        .map(|d| {
            let f = scale * (d as f64 + 0.5) - 0.5;
            let i = f.floor();
            if i < 0.0 || src_len == 1 {
                (0, 0)
            } else if (i as u32) < src_len - 1 {
                (i as usize, ((f - i) * 256.0).round_ties_even() as u32)
            } else {
                (src_len as usize - 1, 0)
            }
        })
        .collect()
}

/// Bilinear resize with OpenCV's INTER_LINEAR_EXACT arithmetic: weights quantised to 1/256
/// ([`resize_taps`]), products summed exactly and rounded once at the end.
pub fn resize_exact(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    let (xs, ys) = (resize_taps(src.width(), width), resize_taps(src.height(), height));
    let (sw, s) = (src.width() as usize, src.as_raw());
    let at = |x: usize, y: usize| s[y * sw + x] as u32;
    // A weight of 0 on the next pixel never reads it, so the last column and row are safe.
    let hrow = |y: usize| -> Vec<u32> { xs.iter().map(|&(x, w)| at(x, y) * (256 - w) + if w > 0 { at(x + 1, y) * w } else { 0 }).collect() };
    let mut out = vec![0u8; (width * height) as usize];
    out.par_chunks_mut(width.max(1) as usize).zip(ys.par_iter()).for_each(|(row, &(y, w))| {
        let top = hrow(y);
        let bottom = if w > 0 { hrow(y + 1) } else { vec![0; top.len()] };
        for ((o, &t), &b) in row.iter_mut().zip(&top).zip(&bottom) {
            *o = ((t * (256 - w) + b * w + (1 << 15)) >> 16).min(255) as u8;
        }
    });
    GrayImage::from_raw(width, height, out).expect("sized buffer")
}

/// Integral and squared-integral images with a zero first row and column, as i32 with
/// wrap-around like OpenCV's CV_32S buffers: differences of four corners stay exact while a
/// window's true sum fits in 32 bits, however large the image. With `tilted`, also the
/// 45-degree integral: `T[Y][X]` sums the pixels (x, y) with y < Y and |x - (X - 1)| <= Y - 1 - y.
pub struct Integrals {
    pub width: usize,
    pub sum: Vec<i32>,
    pub sqsum: Vec<i32>,
    pub tilted: Vec<i32>,
}

/// The tilted integral by the recurrence
/// T(X,Y) = T(X-1,Y-1) + T(X+1,Y-1) - T(X,Y-2) + I(X-1,Y-1) + I(X-1,Y-2),
/// on columns widened by h + 2 on each side: the recurrence reaches outside the image, where
/// pixels count as 0.
fn tilted_integral(img: &GrayImage) -> Vec<i32> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let pad = h + 2;
    let ext = (w + 1 + 2 * pad) as usize;
    let pixel = |x: i64, y: i64| if x >= 0 && y >= 0 && x < w && y < h { img.as_raw()[(y * w + x) as usize] as i32 } else { 0 };
    let mut t = vec![0i32; ext * (h as usize + 1)];
    let at = |x: i64, y: i64| (y as usize) * ext + (x + pad) as usize;
    for y in 1..=h {
        for x in (-pad + 1)..(w + pad) {
            let two_up = if y >= 2 { t[at(x, y - 2)] } else { 0 };
            t[at(x, y)] = t[at(x - 1, y - 1)].wrapping_add(t[at(x + 1, y - 1)]).wrapping_sub(two_up).wrapping_add(pixel(x - 1, y - 1)).wrapping_add(pixel(x - 1, y - 2));
        }
    }
    // Keep the image's own columns 0..=w, laid out like the upright integrals.
    let width = w as usize + 1;
    (0..=h).flat_map(|y| (0..width as i64).map(move |x| (x, y))).map(|(x, y)| t[at(x, y)]).collect()
}

impl Integrals {
    pub fn new(img: &GrayImage, with_tilted: bool) -> Integrals {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let width = w + 1;
        let mut sum = vec![0i32; width * (h + 1)];
        let mut sqsum = vec![0i32; width * (h + 1)];
        for y in 0..h {
            let (mut row, mut row_sq) = (0i32, 0i32);
            for x in 0..w {
                let v = img.as_raw()[y * w + x] as i32;
                row = row.wrapping_add(v);
                row_sq = row_sq.wrapping_add(v * v);
                let i = (y + 1) * width + x + 1;
                sum[i] = sum[i - width].wrapping_add(row);
                sqsum[i] = sqsum[i - width].wrapping_add(row_sq);
            }
        }
        let tilted = if with_tilted { tilted_integral(img) } else { Vec::new() };
        Integrals { width, sum, sqsum, tilted }
    }

    /// Sum over the rectangle at (x, y) of size w x h.
    fn rect(table: &[i32], width: usize, x: usize, y: usize, w: usize, h: usize) -> i32 {
        let (a, b) = (y * width + x, (y + h) * width + x);
        table[a].wrapping_sub(table[a + w]).wrapping_sub(table[b]).wrapping_add(table[b + w])
    }
}

/// OpenCV reads stage thresholds lowered by this much, to absorb rounding in the training tool.
pub(crate) const STAGE_THRESHOLD_EPS: f32 = 1e-5;

/// A feature's rectangles as corner offsets into an integral image of a given row width, so
/// a window's feature value is twelve loads from its top-left index (OpenCV's OptFeature).
/// Tilted features read the tilted integral, at the corners (x, y), (x - h, y + h),
/// (x + w, y + w) and (x + w - h, y + w + h) of the rotated rectangle.
#[derive(Clone, Copy)]
struct Prepared {
    corners: [[u32; 4]; 3],
    weights: [f32; 3],
    tilted: bool,
}

fn prepare(features: &[Feature], width: usize) -> Vec<Prepared> {
    features
        .iter()
        .map(|f| {
            let mut p = Prepared { corners: [[0; 4]; 3], weights: [0.0; 3], tilted: f.tilted };
            for (i, r) in f.rects.iter().enumerate() {
                let (x, y, w, h) = (r.x as usize, r.y as usize, r.w as usize, r.h as usize);
                let at = |x: usize, y: usize| u32::try_from(y * width + x).expect("a cascade window's offsets fit in u32");
                p.corners[i] = if f.tilted {
                    let left = |x: usize| x.checked_sub(h).expect("the parser keeps tilted rectangles inside the window (x >= h)");
                    [at(x, y), at(left(x), y + h), at(x + w, y + w), at(left(x + w), y + w + h)]
                } else {
                    [at(x, y), at(x + w, y), at(x, y + h), at(x + w, y + h)]
                };
                p.weights[i] = r.weight;
            }
            p
        })
        .collect()
}

/// The largest corner offset of any feature, plus one: a window at `base` reads below
/// `base + reach`.
fn reach(features: &[Prepared]) -> usize {
    features.iter().flat_map(|f| f.corners.iter().flatten()).map(|&c| c as usize + 1).max().unwrap_or(0)
}

/// # Safety
/// `base + reach(features)` must not exceed the length of the table `f` reads (checked once
/// per window by [`classify`]): the twelve loads per feature then skip their bounds checks,
/// which would otherwise be a large share of the scan's work.
#[inline(always)]
unsafe fn feature_value(f: &Prepared, ii: &Integrals, base: usize) -> f32 {
    let table = if f.tilted { &ii.tilted } else { &ii.sum };
    // SAFETY: the caller's precondition.
    let at = |c: u32| unsafe { *table.get_unchecked(base + c as usize) };
    let rect = |c: &[u32; 4]| at(c[0]).wrapping_sub(at(c[1])).wrapping_sub(at(c[2])).wrapping_add(at(c[3])) as f32;
    let mut v = f.weights[0] * rect(&f.corners[0]) + f.weights[1] * rect(&f.corners[1]);
    if f.weights[2] != 0.0 {
        v += f.weights[2] * rect(&f.corners[2]);
    }
    v
}

/// How a window fared: passed every stage, or the index of the stage that rejected it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The window's variance is too low to normalise (flat).
    Flat,
    Rejected(usize),
    Face,
}

/// A weak classifier with one split, its feature prepared inline: stump cascades (all the
/// frontal-face ones) run from one flat array, as OpenCV's predictOrderedStump does.
#[derive(Clone, Copy)]
struct FlatStump {
    feature: Prepared,
    threshold: f32,
    left: f32,
    right: f32,
}

/// The cascade laid out for one scale's integral images.
struct Plan {
    kind: PlanKind,
    /// See [`reach`]; the same for both tables.
    reach: usize,
    /// Whether any feature reads the tilted table.
    tilted: bool,
}

enum PlanKind {
    /// Stumps of every stage back to back, and each stage's end and lowered threshold.
    Stumps {
        stumps: Vec<FlatStump>,
        stages: Vec<(usize, f32)>,
    },
    Trees {
        features: Vec<Prepared>,
    },
}

fn plan(cascade: &Cascade, width: usize) -> Plan {
    let features = prepare(&cascade.features, width);
    let (reach, tilted) = (reach(&features), features.iter().any(|f| f.tilted));
    if !cascade.stages.iter().flat_map(|s| &s.trees).all(|t| t.splits.len() == 1) {
        return Plan { kind: PlanKind::Trees { features }, reach, tilted };
    }
    let mut stumps = Vec::new();
    let mut stages = Vec::new();
    for stage in &cascade.stages {
        for tree in &stage.trees {
            let split = tree.splits[0];
            let leaf = |child: i32| tree.leaves[(-child) as usize];
            stumps.push(FlatStump { feature: features[split.feature as usize], threshold: split.threshold, left: leaf(split.left), right: leaf(split.right) });
        }
        stages.push((stumps.len(), stage.threshold - STAGE_THRESHOLD_EPS));
    }
    Plan { kind: PlanKind::Stumps { stumps, stages }, reach, tilted }
}

/// Evaluates the cascade on the window whose top-left corner is (x, y).
fn classify(cascade: &Cascade, plan: &Plan, ii: &Integrals, x: usize, y: usize) -> Verdict {
    let (ww, wh) = (cascade.window.0 as usize, cascade.window.1 as usize);
    // Variance over the window less a 1-pixel border.
    let (nw, nh) = (ww - 2, wh - 2);
    let area = (nw * nh) as f64;
    let s = Integrals::rect(&ii.sum, ii.width, x + 1, y + 1, nw, nh);
    let sq = Integrals::rect(&ii.sqsum, ii.width, x + 1, y + 1, nw, nh) as u32;
    let nf = area * sq as f64 - s as f64 * s as f64;
    if nf <= 0.0 {
        return Verdict::Flat;
    }
    let norm = (1.0 / nf.sqrt()) as f32;
    if area * norm as f64 >= 0.1 {
        return Verdict::Flat;
    }
    let base = y * ii.width + x;
    // The one bounds check for all of this window's feature loads.
    let end = base + plan.reach;
    assert!(end <= ii.sum.len() && (!plan.tilted || end <= ii.tilted.len()), "window at ({x}, {y}) reaches past the integral image");
    match &plan.kind {
        PlanKind::Stumps { stumps, stages } => {
            let mut start = 0;
            for (si, &(end, threshold)) in stages.iter().enumerate() {
                let mut total = 0.0f64;
                for st in &stumps[start..end] {
                    // SAFETY: checked above.
                    let value = unsafe { feature_value(&st.feature, ii, base) } * norm;
                    total += if value < st.threshold { st.left } else { st.right } as f64;
                }
                if total < threshold as f64 {
                    return Verdict::Rejected(si);
                }
                start = end;
            }
        }
        PlanKind::Trees { features } => {
            for (si, stage) in cascade.stages.iter().enumerate() {
                let mut total = 0.0f64;
                for tree in &stage.trees {
                    let mut node = 0i32;
                    let leaf = loop {
                        let split = &tree.splits[node as usize];
                        // SAFETY: checked above.
                        let value = unsafe { feature_value(&features[split.feature as usize], ii, base) } * norm;
                        node = if value < split.threshold { split.left } else { split.right };
                        if node <= 0 {
                            break (-node) as usize;
                        }
                    };
                    total += tree.leaves[leaf] as f64;
                }
                if total < (stage.threshold - STAGE_THRESHOLD_EPS) as f64 {
                    return Verdict::Rejected(si);
                }
            }
        }
    }
    Verdict::Face
}

/// One pyramid level's scan: OpenCV's sizes, steps and row limit for a scale factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleScan {
    pub factor: f32,
    /// The resized image.
    pub size: (u32, u32),
    /// Window positions per row (x < width) and rows (y < rows_end).
    pub work_width: u32,
    pub rows_end: u32,
    /// Pixels between windows: 2 below scale 2, then 1.
    pub step: u32,
    /// A detected window's rectangle size in the original image.
    pub window: (i32, i32),
}

impl ScaleScan {
    /// A window at (x, y) of this level, in original-image coordinates.
    pub fn rect(&self, x: u32, y: u32) -> Rect {
        Rect { x: round_f32(x as f32 * self.factor), y: round_f32(y as f32 * self.factor), w: self.window.0, h: self.window.1 }
    }
}

/// The levels OpenCV scans for an image, in its order; levels without a single window are left
/// out. Parameters that fail [`DetectParams::validate_for`] are refused here, so that every
/// detector, CPU or GPU, refuses them before any work.
pub fn scan_plan(cascade: &Cascade, size: (u32, u32), p: &DetectParams) -> Result<Vec<ScaleScan>> {
    p.validate_for(cascade.window, size)?;
    let (ww, wh) = cascade.window;
    let factors = scales(cascade, size, p);
    // Windows that fit: the working size, one per position of the window's corner.
    let working = |s: f32| {
        let (sw, sh) = scaled_size(size, s);
        ((sw + 1).saturating_sub(ww), (sh + 1).saturating_sub(wh))
    };
    // OpenCV scans each scale in horizontal stripes whose count comes from the first scale's
    // working width; its rounding can leave the last row of windows out, and so must we.
    let stripes = factors.first().map_or(0, |&s| (working(s).0 as f64 / 32.0).ceil() as u32);
    if stripes == 0 {
        return Ok(Vec::new());
    }
    Ok(factors
        .into_iter()
        .filter_map(|factor| {
            let (work_width, work_h) = working(factor);
            if work_width == 0 || work_h == 0 {
                return None;
            }
            let step = if factor >= 2.0 { 1 } else { 2 };
            let stripe = (work_h / step).div_ceil(stripes).max(1) * step;
            let window = (round_f32(ww as f32 * factor), round_f32(wh as f32 * factor));
            Some(ScaleScan { factor, size: scaled_size(size, factor), work_width, rows_end: (stripes * stripe).min(work_h), step, window })
        })
        .collect())
}

/// The windows the cascade accepts on one level, rows top to bottom.
pub fn scan_scale(cascade: &Cascade, img: &GrayImage, level: &ScaleScan) -> Vec<Rect> {
    let scaled = resize_exact(img, level.size.0, level.size.1);
    let ii = Integrals::new(&scaled, cascade.tilted_features());
    let plan = plan(cascade, ii.width);
    let step = level.step as usize;
    let rows: Vec<usize> = (0..level.rows_end as usize).step_by(step).collect();
    let found: Vec<Vec<Rect>> = rows
        .par_iter()
        .map(|&y| {
            let mut row = Vec::new();
            let mut x = 0;
            while x < level.work_width as usize {
                let verdict = classify(cascade, &plan, &ii, x, y);
                if verdict == Verdict::Face {
                    row.push(level.rect(x as u32, y as u32));
                }
                // A window rejected by the very first stage makes OpenCV skip its neighbour.
                x += if verdict == Verdict::Rejected(0) { 2 * step } else { step };
            }
            row
        })
        .collect();
    found.into_iter().flatten().collect()
}

/// Every window the cascade accepts, before grouping, in OpenCV's order (scale by scale, rows
/// top to bottom). Levels run concurrently as well as their rows: the small levels have too
/// few rows to keep every thread busy, and each level's resize and integrals are serial work.
pub fn raw_windows(cascade: &Cascade, img: &GrayImage, p: &DetectParams) -> Result<Vec<Rect>> {
    let levels: Vec<Vec<Rect>> = scan_plan(cascade, (img.width(), img.height()), p)?.par_iter().map(|level| scan_scale(cascade, img, level)).collect();
    Ok(levels.into_iter().flatten().collect())
}

/// Intersects each rectangle with the image and drops the empty ones (OpenCV's last step).
fn clip(rects: Vec<Rect>, (width, height): (u32, u32)) -> Vec<Rect> {
    rects
        .into_iter()
        .filter_map(|r| {
            // In i64: the corners of any i32 rectangle, clipped to any u32 image, fit.
            let (x0, y0) = (r.x.max(0) as i64, r.y.max(0) as i64);
            let (x1, y1) = ((r.x as i64 + r.w as i64).min(width as i64), (r.y as i64 + r.h as i64).min(height as i64));
            (x1 > x0 && y1 > y0).then(|| Rect { x: x0 as i32, y: y0 as i32, w: (x1 - x0) as i32, h: (y1 - y0) as i32 })
        })
        .collect()
}

/// OpenCV's last steps: group the raw windows, then clip the groups to the image.
pub fn group_and_clip(raw: &[Rect], p: &DetectParams, size: (u32, u32)) -> Vec<Rect> {
    clip(group_rectangles(raw, p.min_neighbors, 0.2), size)
}

/// OpenCV's `detectMultiScale` on a grey image; refuses parameters that fail
/// [`DetectParams::validate_for`].
pub fn detect_multi_scale(cascade: &Cascade, img: &GrayImage, p: &DetectParams) -> Result<Vec<Rect>> {
    Ok(group_and_clip(&raw_windows(cascade, img, p)?, p, (img.width(), img.height())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cascade::{Split, Stage, Tree, WeightedRect};

    /// A 20x20 cascade whose one stage accepts every window with enough variance.
    fn accept_all() -> Cascade {
        let rect = |x, y, weight| WeightedRect { x, y, w: 10, h: 20, weight };
        Cascade {
            window: (20, 20),
            features: vec![Feature { rects: vec![rect(0, 0, -1.0), rect(10, 0, 2.0)], tilted: false }],
            stages: vec![Stage { threshold: -1e9, trees: vec![Tree { splits: vec![Split { feature: 0, threshold: 0.0, left: 0, right: -1 }], leaves: vec![1.0, 1.0] }] }],
        }
    }

    /// The smallest scale factor an error suggests.
    fn suggested(err: &Error) -> f64 {
        err.to_string().rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn scale_factors_that_do_not_grow_the_window_are_refused() {
        for f in [1.0, 0.9, 0.0, -1.1, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let p = DetectParams { scale_factor: f, ..Default::default() };
            let err = p.validate().unwrap_err();
            assert!(matches!(err, Error::Invalid(_)) && err.to_string().starts_with(&format!("scale factor {f}: ")), "{err}");
            // Before any work, whatever the image.
            assert!(detect_multi_scale(&accept_all(), &GrayImage::new(64, 64), &p).is_err());
        }
        assert!(DetectParams::default().validate().is_ok());
    }

    #[test]
    fn a_scale_factor_just_above_one_is_refused_with_the_smallest_that_works() {
        let start = std::time::Instant::now();
        let img = GrayImage::new(640, 480);
        let p = DetectParams { scale_factor: 1.0000001, ..Default::default() };
        let err = detect_multi_scale(&accept_all(), &img, &p).unwrap_err();
        assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
        let text = err.to_string();
        assert!(text.contains("about 31790952 pyramid levels from the 20x20 window to 640x480, over the limit of 1000"), "{text}");
        // (480.5 / 20)^(1 / 1000), rounded up to 6 decimals.
        let least = suggested(&err);
        assert_eq!(least, 1.003185);
        let at = |f: f64| DetectParams { scale_factor: f, ..p }.validate_for((20, 20), (640, 480));
        assert!(at(least).is_ok() && at(least - 1e-6).is_err());
        assert_eq!(scan_plan(&accept_all(), (640, 480), &DetectParams { scale_factor: least, ..p }).unwrap().len(), MAX_LEVELS);
        // The very next double after 1: no endless count, a suggestion all the same.
        let next = DetectParams { scale_factor: f64::from_bits(1f64.to_bits() + 1), ..p };
        assert_eq!(suggested(&next.validate_for((20, 20), (640, 480)).unwrap_err()), least);
        // A maximum size shortens the pyramid, and so allows a smaller factor.
        let capped = DetectParams { max_size: Some((40, 40)), ..p };
        assert!(suggested(&capped.validate_for((20, 20), (640, 480)).unwrap_err()) < least);
    }

    #[test]
    fn the_level_limit_leaves_room_for_every_real_use() {
        // The comment on MAX_LEVELS: 1.01 takes a 24-pixel window to 10,000 pixels in 607 levels.
        let p = DetectParams { scale_factor: 1.01, ..Default::default() };
        assert!(p.validate_for((24, 24), (10_000, 10_000)).is_ok());
        assert_eq!(pyramid((24, 24), (10_000, 10_000), 1.01).count(), 607);
        // A window that does not fit has no levels at all, whatever the factor.
        let slow = DetectParams { scale_factor: 1.0000001, ..Default::default() };
        assert!(slow.validate_for((24, 24), (23, 480)).is_ok());
    }

    #[test]
    fn a_minimum_size_above_the_maximum_is_refused() {
        let p = DetectParams { min_size: (100, 30), max_size: Some((50, 50)), ..Default::default() };
        assert!(p.validate().unwrap_err().to_string().contains("minimum size 100x30 is larger than the maximum size 50x50"));
        // A maximum with a zero side is no maximum, as in OpenCV.
        assert!(DetectParams { max_size: Some((0, 50)), ..p }.validate().is_ok());
        assert!(DetectParams { min_size: (50, 50), ..p }.validate().is_ok());
    }

    #[test]
    fn scaled_sizes_divide_in_f32_like_opencv() {
        // f64 division would give 2265 here.
        assert_eq!(scaled_size((3647, 100), 1.61051f32).0, 2264);
    }

    #[test]
    fn the_stripe_rounding_drops_the_last_row_as_opencv_does() {
        // 307x307 with a 20x20 window: at scale 1.21 the image is 254 pixels, 235 rows of windows,
        // 9 stripes of 26 rows: rows stop at 234, so y = 234 is never scanned.
        let img = GrayImage::from_fn(307, 307, |x, y| image::Luma([((x * 7 + y * 13) % 251) as u8]));
        let p = DetectParams { min_neighbors: 0, ..Default::default() };
        let windows = raw_windows(&accept_all(), &img, &p).unwrap();
        let at_121: Vec<&Rect> = windows.iter().filter(|r| r.w == 24).collect();
        assert!(!at_121.is_empty());
        let last_y = at_121.iter().map(|r| r.y).max().unwrap();
        assert_eq!(last_y, round_f32(232.0 * 1.21f32), "the last scanned row at scale 1.21 is y = 232");
    }
}
