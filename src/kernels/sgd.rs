//! SGD with momentum (Nesterov's or plain) and L2 weight decay, updating parameters in place.
//! PyTorch's `torch.optim.SGD` form with no dampening, so that runs compare with PyTorch's:
//! the decay is added to the gradient (not decoupled from it as in AdamW), and the momentum
//! buffer starts as the first step's gradient.

use super::{check_buf, for_each_chunk, MIN_TASK_ELEMENTS};
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    /// L2 penalty on every trainable tensor, biases and batch-norm scales and shifts included
    /// (PyTorch's default when all parameters are handed to one optimizer).
    pub weight_decay: f32,
}

impl SgdConfig {
    /// How much of the momentum buffer step `t` (counted from 1) carries over: none on the
    /// first step, where PyTorch sets the buffer to the gradient whatever it held.
    fn keep(&self, t: u64) -> f32 {
        if t <= 1 {
            0.0
        } else {
            self.momentum
        }
    }
}

/// One update at step `t` (1 for the first); `momentum` is the buffer PyTorch calls
/// `momentum_buffer`.
pub fn step_cpu(cfg: SgdConfig, t: u64, param: &mut [f32], grad: &[f32], momentum: &mut [f32]) -> Result<()> {
    let n = param.len();
    check_len("sgd", "gradient", grad.len(), n)?;
    check_len("sgd", "momentum buffer", momentum.len(), n)?;
    let keep = cfg.keep(t);
    param.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(grad).zip(momentum.par_iter_mut()).for_each(|((p, &grad), buf)| {
        let g = grad + cfg.weight_decay * *p;
        *buf = keep * *buf + g;
        let update = if cfg.nesterov { g + cfg.momentum * *buf } else { *buf };
        *p -= cfg.lr * update;
    });
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    momentum: f32,
    keep: f32,
    weight_decay: f32,
    nesterov: u32,
    _pad: [u32; 2],
}

pub fn step_gpu(rec: &mut Recorder, cfg: SgdConfig, t: u64, param: &GpuBuffer<f32>, grad: &GpuBuffer<f32>, momentum: &GpuBuffer<f32>) -> Result<()> {
    let n = param.len();
    check_buf("sgd", "gradient", grad, n)?;
    check_buf("sgd", "momentum buffer", momentum, n)?;
    let keep = cfg.keep(t);
    for_each_chunk(rec, "sgd", n, 3, |rec, r| {
        let params = Params { n: r.len() as u32, lr: cfg.lr, momentum: cfg.momentum, keep, weight_decay: cfg.weight_decay, nesterov: cfg.nesterov as u32, _pad: [0; 2] };
        let bindings = [grad.slice(r.clone()), param.slice(r.clone()).rw(), momentum.slice(r.clone()).rw()];
        rec.dispatch_linear("sgd", &shaders::SGD, "step", &params, &bindings, r.len(), 256)
    })
}
