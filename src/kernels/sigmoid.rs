//! The logistic function, element-wise: a detector's class and objectness scores.

use super::{check_buf, for_each_chunk, MIN_TASK_ELEMENTS};
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// 1 / (1 + e^-x) from e^-|x|, which never overflows: for x < 0 it is e^x / (1 + e^x), so
/// that large negative inputs give 0 rather than 1 / inf (and NaN stays NaN). sigmoid.wgsl
/// computes the same expression.
pub fn sigmoid(x: f32) -> f32 {
    let e = (-x.abs()).exp();
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

pub fn forward_cpu(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("sigmoid", "output", y.len(), x.len())?;
    y.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(x).for_each(|(y, &x)| *y = sigmoid(x));
    Ok(())
}

pub fn forward_gpu(rec: &mut Recorder, x: &GpuBuffer<f32>, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("sigmoid", "output", y, x.len())?;
    for_each_chunk(rec, "sigmoid", x.len(), 2, |rec, r| {
        let params = [r.len() as u32, 0, 0, 0];
        rec.dispatch_linear("sigmoid", &shaders::SIGMOID, "sigmoid", &params, &[x.slice(r.clone()), y.slice(r.clone()).rw()], r.len(), 256)
    })
}
