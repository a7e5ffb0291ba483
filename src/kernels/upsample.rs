//! Nearest-neighbour resizing of NCHW planes: a feature pyramid doubles a coarse map to the
//! size of the finer one beside it. Output (oy, ox) takes input (oy * h / oh, ox * w / ow),
//! rounded down: PyTorch's 'nearest' and ONNX Resize's 'asymmetric' + 'floor' in exact integer
//! form. For an exact 2x every one of ONNX's modes agrees with it: out[y][x] = in[y / 2][x / 2].

use super::{check_buf, items_per_task};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpsampleShape {
    /// batch * channels
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl UpsampleShape {
    /// Each plane resized to `oh` x `ow`.
    pub fn new(batch: usize, channels: usize, (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Result<Self> {
        if h == 0 || w == 0 || oh == 0 || ow == 0 {
            return Err(shape_err("upsample", format!("sizes must be positive, got {h}x{w} -> {oh}x{ow}")));
        }
        // upsample.wgsl computes oy * h and ox * w in u32.
        if oh.checked_mul(h).is_none_or(|v| v > u32::MAX as usize) || ow.checked_mul(w).is_none_or(|v| v > u32::MAX as usize) {
            return Err(shape_err("upsample", format!("{h}x{w} -> {oh}x{ow} is too large")));
        }
        Ok(UpsampleShape { planes: batch * channels, h, w, oh, ow })
    }
    /// Each plane doubled in both directions.
    pub fn double(batch: usize, channels: usize, (h, w): (usize, usize)) -> Result<Self> {
        Self::new(batch, channels, (h, w), (2 * h, 2 * w))
    }
    pub fn input_len(&self) -> usize {
        self.planes * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.planes * self.oh * self.ow
    }
}

pub fn forward_cpu(s: UpsampleShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("upsample", "input", x.len(), s.input_len())?;
    check_len("upsample", "output", y.len(), s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    let cols: Vec<usize> = (0..s.ow).map(|ox| ox * s.w / s.ow).collect();
    y.par_chunks_mut(plane_out).zip(x.par_chunks(plane_in)).with_min_len(items_per_task(plane_out)).for_each(|(yp, xp)| {
        for oy in 0..s.oh {
            let iy = oy * s.h / s.oh;
            // An output row from the same input row as the one above it (every other row of a
            // 2x) is a copy of that row.
            if oy > 0 && (oy - 1) * s.h / s.oh == iy {
                yp.copy_within((oy - 1) * s.ow..oy * s.ow, oy * s.ow);
                continue;
            }
            let xrow = &xp[iy * s.w..][..s.w];
            yp[oy * s.ow..][..s.ow].iter_mut().zip(&cols).for_each(|(y, &ix)| *y = xrow[ix]);
        }
    });
    Ok(())
}

pub fn forward_gpu(rec: &mut Recorder, s: UpsampleShape, x: &GpuBuffer<f32>, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("upsample", "input", x, s.input_len())?;
    check_buf("upsample", "output", y, s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh * s.ow);
    for r in rec.gpu().plan_chunks("upsample", s.planes, &[4 * plane_in as u64, 4 * plane_out as u64], usize::MAX)? {
        let params = [r.len() as u32, s.h as u32, s.w as u32, s.oh as u32, s.ow as u32, 0, 0, 0];
        let bindings = [x.slice(r.start * plane_in..r.end * plane_in), y.slice(r.start * plane_out..r.end * plane_out).rw()];
        rec.dispatch_linear("upsample", &shaders::UPSAMPLE, "nearest", &params, &bindings, r.len() * plane_out, 256)?;
    }
    Ok(())
}
