//! Affine warp of 8-bit 48x48 grey images into S x S floats in [0, 1], S (at most 48) the
//! model's input side: the augmentation kernel. Each image has an [`Augment`]: a 2x3 map from
//! output pixel to source point (drawn by `augment`), sampled bilinearly with coordinates
//! clamped to the image (edge pixels repeat outside it, as Keras' fill_mode='nearest'), and a
//! rectangle of output pixels written as one fill value instead (random erasing). A crop is a
//! translation in the map, so cropping costs nothing beyond the warp.

use super::check_buf;
use crate::data::{PIXELS, SIDE};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// How one image is warped, laid out as warp.wgsl's `Augment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Augment {
    /// Output pixel (x, y) -> source point `[a b c; d e f] * (x, y, 1)` in the 48x48 image.
    pub map: [f32; 6],
    /// Output pixels with x0 <= x < x1 and y0 <= y < y1, as [x0, y0, x1, y1], take `fill`
    /// instead of the warped image; [`NO_ERASE`] is empty.
    pub erase: [u32; 4],
    /// In [0, 1], as the warped pixels are.
    pub fill: f32,
}

/// No erased rectangle.
pub const NO_ERASE: [u32; 4] = [0; 4];

impl Augment {
    /// The warp by `map`, nothing erased.
    pub const fn warp(map: [f32; 6]) -> Self {
        Augment { map, erase: NO_ERASE, fill: 0.0 }
    }
}

/// The side of the square grey input of a model with input shape [channels, height, width]:
/// the warp crops it from the 48x48 images, so it can be no larger.
pub fn output_side(input: [usize; 3]) -> Result<usize> {
    match input {
        [1, h, w] if h == w && (1..=SIDE).contains(&h) => Ok(h),
        _ => Err(shape_err("model input", format!("{input:?}: the images are {SIDE}x{SIDE} grey, so the input must be [1, S, S] with S from 1 to {SIDE} (a crop)"))),
    }
}

fn check_side(side: usize) -> Result<usize> {
    output_side([1, side, side])
}

/// The offset of the centre crop of side `side` (at most 48) in x and y: whole pixels, rounded
/// down when 48 - side is odd, so that the crop copies pixels instead of interpolating them.
pub fn centre_offset(side: usize) -> usize {
    (SIDE - side) / 2
}

/// The `side` x `side` crop at (x, y) of the image, mirrored or not.
pub fn crop(side: usize, (x, y): (usize, usize), mirrored: bool) -> Augment {
    let (x, y) = (x as f32, y as f32);
    Augment::warp(if mirrored { [-1.0, 0.0, x + (side - 1) as f32, 0.0, 1.0, y] } else { [1.0, 0.0, x, 0.0, 1.0, y] })
}

/// The centre crop of side `side`: the image as it is when the side is 48.
pub fn centre(side: usize) -> Augment {
    let o = centre_offset(side);
    crop(side, (o, o), false)
}

/// The centre crop's mirror image: output column x reads its column side - 1 - x.
pub fn mirror(side: usize) -> Augment {
    let o = centre_offset(side);
    crop(side, (o, o), true)
}

/// The four corner crops and the centre crop of side `side`, each followed by its mirror image:
/// the ten views that test-time ten-crop averaging classifies.
pub fn ten_crops(side: usize) -> [Augment; 10] {
    let (far, mid) = (SIDE - side, centre_offset(side));
    let corners = [(0, 0), (far, 0), (0, far), (far, far), (mid, mid)];
    std::array::from_fn(|i| crop(side, corners[i / 2], i % 2 == 1))
}

/// Bilinear sample at (sx, sy) of a `width` x `height` byte image with clamped (repeated-edge)
/// coordinates; the same arithmetic as bilinear.wgsl.
#[inline]
pub(crate) fn sample(img: &[u8], (width, height): (usize, usize), sx: f32, sy: f32) -> f32 {
    let (sx, sy) = (sx.clamp(0.0, (width - 1) as f32), sy.clamp(0.0, (height - 1) as f32));
    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
    let (ax, ay) = (sx - x0 as f32, sy - y0 as f32);
    let at = |x: usize, y: usize| img[y * width + x] as f32;
    let upper = at(x0, y0) + ax * (at(x1, y0) - at(x0, y0));
    let lower = at(x0, y1) + ax * (at(x1, y1) - at(x0, y1));
    upper + ay * (lower - upper)
}

/// The offset of a map that only moves a `side` x `side` window by whole pixels inside the
/// image (the crops of evaluation): such a window is copied, which gives the bilinear sample's
/// values exactly (its weights are 0) at a fraction of the cost.
fn whole_pixel_offset(m: &[f32; 6], side: usize) -> Option<(usize, usize)> {
    let inside = |v: f32| v.fract() == 0.0 && v >= 0.0 && v as usize + side <= SIDE;
    (m[0] == 1.0 && m[1] == 0.0 && m[3] == 0.0 && m[4] == 1.0 && inside(m[2]) && inside(m[5])).then(|| (m[2] as usize, m[5] as usize))
}

/// Warps each image of `images` ([n, 48, 48] bytes) by its augmentation into `out`
/// ([n, side, side]).
pub fn warp_cpu(images: &[u8], augments: &[Augment], side: usize, out: &mut [f32]) -> Result<()> {
    let plane = check_side(side)?.pow(2);
    check_len("warp", "images", images.len(), augments.len() * PIXELS)?;
    check_len("warp", "output", out.len(), augments.len() * plane)?;
    out.par_chunks_mut(plane).zip(images.par_chunks(PIXELS)).zip(augments.par_iter()).for_each(|((dst, src), a)| {
        let m = &a.map;
        if let Some((ox, oy)) = whole_pixel_offset(m, side) {
            for (row, y) in dst.chunks_mut(side).zip(oy..) {
                row.iter_mut().zip(&src[y * SIDE + ox..]).for_each(|(d, &s)| *d = s as f32 / 255.0);
            }
        } else {
            for (y, row) in dst.chunks_mut(side).enumerate() {
                for (x, d) in row.iter_mut().enumerate() {
                    let (fx, fy) = (x as f32, y as f32);
                    *d = sample(src, (SIDE, SIDE), m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]) / 255.0;
                }
            }
        }
        let [x0, y0, x1, y1] = a.erase.map(|v| (v as usize).min(side));
        for row in dst.chunks_mut(side).take(y1).skip(y0) {
            row[x0.min(x1)..x1].fill(a.fill);
        }
    });
    Ok(())
}

/// GPU version: `pixels` holds the images' bytes packed four to a u32 (see
/// [`crate::gpu::pack_bytes`]), `augments` one [`Augment`] per image.
pub fn warp_gpu(rec: &mut Recorder, side: usize, pixels: &GpuBuffer<u32>, augments: &GpuBuffer<Augment>, out: &GpuBuffer<f32>) -> Result<()> {
    let images = augments.len();
    let plane = check_side(side)?.pow(2);
    check_buf("warp", "packed images", pixels, images * PIXELS / 4)?;
    check_buf("warp", "output", out, images * plane)?;
    let params = [images as u32, SIDE as u32, side as u32, 0];
    rec.dispatch_linear("warp", &shaders::WARP, "warp", &params, &[pixels.all(), augments.all(), out.all().rw()], images * plane, 256)
}
