//! Adam with bias correction, updating parameters in place. Keras' formulation: the correction
//! goes into the step size, and epsilon (1e-7 by default, as in Keras) is added to sqrt(v)
//! before the correction rather than after, so results match Keras rather than PyTorch exactly.

use super::{check_buf, for_each_chunk, MIN_TASK_ELEMENTS};
use crate::error::{check_len, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-7 }
    }
}

impl AdamConfig {
    /// The bias-corrected step size for step `t` (counted from 1), in f64 since beta2^t
    /// is within 1e-3 of 1 for the first steps.
    pub fn lr_t(&self, t: u64) -> f32 {
        let t = t.max(1) as i32;
        let (b1, b2) = (self.beta1 as f64, self.beta2 as f64);
        (self.lr as f64 * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t))) as f32
    }
}

/// One update at step `t` (1 for the first).
pub fn step_cpu(cfg: AdamConfig, t: u64, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) -> Result<()> {
    let n = param.len();
    check_len("adam", "gradient", grad.len(), n)?;
    check_len("adam", "first moment", m.len(), n)?;
    check_len("adam", "second moment", v.len(), n)?;
    let lr_t = cfg.lr_t(t);
    let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.epsilon);
    param.par_iter_mut().with_min_len(MIN_TASK_ELEMENTS).zip(grad).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(|((p, &g), (m, v))| {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p -= lr_t * *m / (v.sqrt() + eps);
    });
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    lr_t: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    _pad: [u32; 3],
}

pub fn step_gpu(rec: &mut Recorder, cfg: AdamConfig, t: u64, param: &GpuBuffer<f32>, grad: &GpuBuffer<f32>, m: &GpuBuffer<f32>, v: &GpuBuffer<f32>) -> Result<()> {
    let n = param.len();
    check_buf("adam", "gradient", grad, n)?;
    check_buf("adam", "first moment", m, n)?;
    check_buf("adam", "second moment", v, n)?;
    let lr_t = cfg.lr_t(t);
    for_each_chunk(rec, "adam", n, 4, |rec, r| {
        let params = Params { n: r.len() as u32, lr_t, beta1: cfg.beta1, beta2: cfg.beta2, epsilon: cfg.epsilon, _pad: [0; 3] };
        let bindings = [grad.slice(r.clone()), param.slice(r.clone()).rw(), m.slice(r.clone()).rw(), v.slice(r.clone()).rw()];
        rec.dispatch_linear("adam", &shaders::ADAM, "step", &params, &bindings, r.len(), 256)
    })
}
