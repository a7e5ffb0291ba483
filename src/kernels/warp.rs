//! Affine warp of 8-bit 48x48 grey images into floats in [0, 1]: the augmentation kernel.
//! Each image has a 2x3 map from output pixel to source point (drawn by `augment`), sampled
//! bilinearly with coordinates clamped to the image (edge pixels repeat outside it, as Keras'
//! fill_mode='nearest').

use super::check_buf;
use crate::data::SIDE;
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// The identity map (no augmentation).
pub const IDENTITY: [f32; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
/// The horizontal mirror image: output column x reads source column 47 - x.
pub const MIRROR: [f32; 6] = [-1.0, 0.0, (SIDE - 1) as f32, 0.0, 1.0, 0.0];

const PLANE: usize = SIDE * SIDE;

/// Bilinear sample of a byte image with clamped (repeated-edge) coordinates; the same
/// arithmetic as warp.wgsl.
fn sample(img: &[u8], sx: f32, sy: f32) -> f32 {
    let top = (SIDE - 1) as f32;
    let (sx, sy) = (sx.clamp(0.0, top), sy.clamp(0.0, top));
    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(SIDE - 1), (y0 + 1).min(SIDE - 1));
    let (ax, ay) = (sx - x0 as f32, sy - y0 as f32);
    let at = |x: usize, y: usize| img[y * SIDE + x] as f32;
    let upper = at(x0, y0) + ax * (at(x1, y0) - at(x0, y0));
    let lower = at(x0, y1) + ax * (at(x1, y1) - at(x0, y1));
    upper + ay * (lower - upper)
}

/// Warps each image of `images` ([n, 48, 48] bytes) by its map into `out` ([n, 48, 48]).
pub fn warp_cpu(images: &[u8], maps: &[[f32; 6]], out: &mut [f32]) -> Result<()> {
    check_len("warp", "images", images.len(), maps.len() * PLANE)?;
    check_len("warp", "output", out.len(), maps.len() * PLANE)?;
    out.par_chunks_mut(PLANE).zip(images.par_chunks(PLANE)).zip(maps.par_iter()).for_each(|((dst, src), m)| {
        if *m == IDENTITY {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32 / 255.0);
            return;
        }
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (fx, fy) = (x as f32, y as f32);
                dst[y * SIDE + x] = sample(src, m[0] * fx + m[1] * fy + m[2], m[3] * fx + m[4] * fy + m[5]) / 255.0;
            }
        }
    });
    Ok(())
}

/// GPU version: `pixels` holds the images' bytes packed four to a u32 (see [`crate::gpu::pack_bytes`]), `maps`
/// six floats per image.
pub fn warp_gpu(rec: &mut Recorder, images: usize, pixels: &GpuBuffer<u32>, maps: &GpuBuffer<f32>, out: &GpuBuffer<f32>) -> Result<()> {
    check_buf("warp", "packed images", pixels, images * PLANE / 4)?;
    check_buf("warp", "maps", maps, images * 6)?;
    check_buf("warp", "output", out, images * PLANE)?;
    let params = [images as u32, SIDE as u32, 0, 0];
    rec.dispatch_linear("warp", &shaders::WARP, "warp", &params, &[pixels.all(), maps.all(), out.all().rw()], images * PLANE, 256)
}
