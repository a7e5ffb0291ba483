//! Face crops for the expression model: 48x48 grey images cut from a whole grey image, each
//! through a 2x3 map from crop pixel to image point (a rotation, scale and shift that
//! [`crate::align`] fits to the face's landmarks). Each crop pixel averages `samples` x
//! `samples` bilinear samples spread over its footprint in the image, so that a face hundreds
//! of pixels wide shrinks the way an area filter shrinks it instead of aliasing. Each bilinear
//! sample already weighs the pixels within one of its point, so samples two image pixels apart
//! reach every pixel of the footprint: a quarter of the samples of one a pixel. The crops are
//! bytes, rounded to nearest, as the training images are; on the GPU they stay packed four to
//! a u32, the layout the warp kernel reads.

use super::warp::sample;
use super::{check_buf, widest_vectors};
use crate::data::{PIXELS, SIDE};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// Samples a crop pixel takes at most in each direction: enough for a face 16 times the crop's
/// side (768 px); a larger face's average skips some of its pixels.
pub const MAX_SAMPLES: u32 = 8;

/// How one crop is cut, laid out as face_crop.wgsl's `CropMap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CropMap {
    /// Crop pixel (x, y) -> image point `[a b c; d e f] * (x, y, 1)`, pixel centres at integers.
    pub map: [f32; 6],
    /// Samples a pixel takes in each direction.
    pub samples: u32,
}

impl CropMap {
    /// The crop through `map`, with a sample every two image pixels a crop pixel spans (its
    /// scale: the square root of the map's determinant) in each direction, from 1 to
    /// [`MAX_SAMPLES`].
    pub fn new(map: [f32; 6]) -> Self {
        let scale = (map[0] * map[4] - map[1] * map[3]).abs().sqrt();
        let samples = if scale.is_finite() { (scale / 2.0).ceil().clamp(1.0, MAX_SAMPLES as f32) as u32 } else { 1 };
        CropMap { map, samples }
    }
}

fn check_image(width: usize, height: usize, pixels: usize) -> Result<()> {
    if width == 0 || height == 0 || width.checked_mul(height) != Some(pixels) || width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(shape_err("face_crop", format!("a {width}x{height} image with {pixels} pixels")));
    }
    Ok(())
}

/// Cuts one 48x48 crop from `image` (`width` x `height` bytes) into `out` per map.
pub fn face_crops_cpu(image: &[u8], (width, height): (usize, usize), maps: &[CropMap], out: &mut [u8]) -> Result<()> {
    check_image(width, height, image.len())?;
    check_len("face_crop", "output", out.len(), maps.len() * PIXELS)?;
    out.par_chunks_mut(PIXELS).zip(maps.par_iter()).for_each(|(crop, c)| cut_crop(image, (width, height), c, crop));
    Ok(())
}

widest_vectors! {
/// One crop of [`face_crops_cpu`]. A big face takes up to 64 bilinear samples a pixel, each
/// with two `floor`s, which baseline x86-64 has no instruction for: compiled for AVX they are
/// one instruction each instead of a call into libm.
fn cut_crop(image: &[u8], size: (usize, usize), c: &CropMap, crop: &mut [u8]) {
    let (m, n) = (&c.map, c.samples.clamp(1, MAX_SAMPLES));
    let step = 1.0 / n as f32;
    for (y, row) in crop.chunks_mut(SIDE).enumerate() {
        for (x, pixel) in row.iter_mut().enumerate() {
            let mut sum = 0.0;
            for j in 0..n {
                let fy = y as f32 + (j as f32 + 0.5) * step - 0.5;
                for q in 0..n {
                    let fx = x as f32 + (q as f32 + 0.5) * step - 0.5;
                    sum += sample(image, size, m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]);
                }
            }
            *pixel = (sum / (n * n) as f32 + 0.5).floor().clamp(0.0, 255.0) as u8;
        }
    }
}}

/// GPU version: `pixels` holds the image's bytes packed four to a u32 (see
/// [`crate::gpu::pack_bytes`]), `out` the crops' bytes packed the same way.
pub fn face_crops_gpu(rec: &mut Recorder, (width, height): (usize, usize), pixels: &GpuBuffer<u32>, maps: &GpuBuffer<CropMap>, out: &GpuBuffer<u32>) -> Result<()> {
    check_image(width, height, width * height)?;
    check_buf("face_crop", "packed image", pixels, (width * height).div_ceil(4))?;
    let words = maps.len() * PIXELS / 4;
    check_buf("face_crop", "packed crops", out, words)?;
    let params = [width as u32, height as u32, maps.len() as u32, 0];
    rec.dispatch_linear("face_crop", &shaders::FACE_CROP, "face_crop", &params, &[pixels.all(), maps.all(), out.all().rw()], words, 256)
}
