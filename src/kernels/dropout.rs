//! Inverted dropout with a counter-based mask: whether element i is kept depends only on
//! (seed, i), so the GPU and CPU draw the same mask, the mask is never stored, and the backward
//! pass is the same masking applied to dy.

use super::{check_buf, for_each_chunk};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// The mask for one dropout call: drop probability and seed.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    pub rate: f32,
    pub seed: u32,
}

impl Mask {
    pub fn new(rate: f32, seed: u32) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(shape_err("dropout", format!("rate {rate} must be in [0, 1)")));
        }
        Ok(Mask { rate, seed })
    }
    /// Hash values below this are dropped: rate * 2^32.
    fn threshold(&self) -> u32 {
        (self.rate as f64 * 4294967296.0).min(u32::MAX as f64) as u32
    }
    fn scale(&self) -> f32 {
        1.0 / (1.0 - self.rate)
    }
    pub fn keeps(&self, i: u32) -> bool {
        mix32(i ^ mix32(self.seed)) >= self.threshold()
    }
}

/// The same integer finaliser as dropout.wgsl.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846ca68b);
    x ^= x >> 16;
    x
}

/// `dst = src * mask / (1 - rate)`: the forward pass on x, the backward pass on dy.
pub fn apply_cpu(mask: Mask, src: &[f32], dst: &mut [f32]) -> Result<()> {
    check_len("dropout", "output", dst.len(), src.len())?;
    if mask.rate == 0.0 {
        // Inference: every element is kept with scale 1.
        dst.copy_from_slice(src);
        return Ok(());
    }
    let scale = mask.scale();
    const CHUNK: usize = 1 << 14;
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).enumerate().for_each(|(c, (d, s))| {
        // The product is taken whether kept or not, so the loop has no branch and compiles to
        // SIMD (with the branch it runs scalar).
        for ((d, &s), i) in d.iter_mut().zip(s).zip((c * CHUNK) as u32..) {
            let kept = s * scale;
            *d = if mask.keeps(i) { kept } else { 0.0 };
        }
    });
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    seed: u32,
    threshold: u32,
    scale: f32,
    _pad: [u32; 3],
}

pub fn apply_gpu(rec: &mut Recorder, mask: Mask, src: &GpuBuffer<f32>, dst: &GpuBuffer<f32>) -> Result<()> {
    check_buf("dropout", "output", dst, src.len())?;
    for_each_chunk(rec, "dropout", src.len(), 2, |rec, r| {
        let params = Params { n: r.len() as u32, offset: r.start as u32, seed: mask.seed, threshold: mask.threshold(), scale: mask.scale(), _pad: [0; 3] };
        rec.dispatch_linear("dropout", &shaders::DROPOUT, "apply_mask", &params, &[src.slice(r.clone()), dst.slice(r.clone()).rw()], r.len(), 256)
    })
}
