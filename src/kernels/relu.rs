//! ReLU and its gradient, element-wise.

use super::{check_buf, for_each_chunk, MIN_TASK_ELEMENTS};
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// Written so that NaN passes through (f32::max would turn it into 0 and hide a diverging run).
pub(crate) fn relu(x: f32) -> f32 {
    if x <= 0.0 {
        0.0
    } else {
        x
    }
}

pub fn forward_cpu(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("relu", "output", y.len(), x.len())?;
    y.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(x).for_each(|(y, &x)| *y = relu(x));
    Ok(())
}

/// `dx = dy` where `x > 0`, else 0.
pub fn backward_cpu(x: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("relu", "output gradient", dy.len(), x.len())?;
    check_len("relu", "input gradient", dx.len(), x.len())?;
    dx.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(x).zip(dy).for_each(|((dx, &x), &g)| *dx = if x > 0.0 { g } else { 0.0 });
    Ok(())
}

fn run(rec: &mut Recorder, entry: &'static str, x: &GpuBuffer<f32>, dy: Option<&GpuBuffer<f32>>, out: &GpuBuffer<f32>) -> Result<()> {
    for_each_chunk(rec, "relu", x.len(), 3, |rec, r| {
        let params = [r.len() as u32, 0, 0, 0];
        // The forward entry point reads no gradient; x fills that binding.
        let g = dy.unwrap_or(x).slice(r.clone());
        let bindings = [x.slice(r.clone()), g, out.slice(r.clone()).rw()];
        rec.dispatch_linear("relu", &shaders::RELU, entry, &params, &bindings, r.len(), 256)
    })
}

pub fn forward_gpu(rec: &mut Recorder, x: &GpuBuffer<f32>, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("relu", "output", y, x.len())?;
    run(rec, "forward", x, None, y)
}

pub fn backward_gpu(rec: &mut Recorder, x: &GpuBuffer<f32>, dy: &GpuBuffer<f32>, dx: &GpuBuffer<f32>) -> Result<()> {
    check_buf("relu", "output gradient", dy, x.len())?;
    check_buf("relu", "input gradient", dx, x.len())?;
    run(rec, "backward", x, Some(dy), dx)
}
