//! Element-wise sum of two tensors, with an optional fused ReLU: a feature pyramid adds each
//! upsampled coarse map to the finer one beside it.

use super::conv2d::Activation;
use super::relu::relu;
use super::{check_buf, for_each_chunk, MIN_TASK_ELEMENTS};
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// `out = act(a + b)`.
pub fn forward_cpu(a: &[f32], b: &[f32], act: Activation, out: &mut [f32]) -> Result<()> {
    check_len("add", "second operand", b.len(), a.len())?;
    check_len("add", "output", out.len(), a.len())?;
    let relu_after = act == Activation::Relu;
    out.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(a).zip(b).for_each(|((out, &a), &b)| *out = if relu_after { relu(a + b) } else { a + b });
    Ok(())
}

pub fn forward_gpu(rec: &mut Recorder, a: &GpuBuffer<f32>, b: &GpuBuffer<f32>, act: Activation, out: &GpuBuffer<f32>) -> Result<()> {
    check_buf("add", "second operand", b, a.len())?;
    check_buf("add", "output", out, a.len())?;
    for_each_chunk(rec, "add", a.len(), 3, |rec, r| {
        let params = [r.len() as u32, (act == Activation::Relu) as u32, 0, 0];
        let bindings = [a.slice(r.clone()), b.slice(r.clone()), out.slice(r.clone()).rw()];
        rec.dispatch_linear("add", &shaders::ADD, "add", &params, &bindings, r.len(), 256)
    })
}
