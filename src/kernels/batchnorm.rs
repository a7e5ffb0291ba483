//! Batch normalisation over NCHW activations (a dense layer's [batch, features] is the case
//! plane = 1), per channel over batch and pixels. Training mode normalises with the batch's
//! mean and biased variance and updates the running statistics Keras-style
//! (`running = momentum * running + (1 - momentum) * batch`, momentum 0.99, epsilon 1e-3);
//! inference mode normalises with the running statistics.
//! GPU: shaders/batchnorm_forward.wgsl (statistics, normalisation) and
//! shaders/batchnorm_backward.wgsl (per-channel sums, data gradient).

use super::conv2d::Activation;
use super::relu::relu;
use super::{check_buf, items_per_task, widest_vectors};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

/// Consecutive elements per thread in the per-element GPU passes (`ELEMENTS` in their shaders):
/// each thread divides once to find its first element's channel and steps from there.
const ELEMENTS_PER_THREAD: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub batch: usize,
    pub channels: usize,
    /// Pixels per channel image (1 after a dense layer).
    pub plane: usize,
}

impl BnShape {
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn count(&self) -> usize {
        self.batch * self.plane
    }
    /// Channel c's planes, image by image: every per-channel sum runs in this order, so
    /// results do not depend on the thread count.
    fn channel<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        x.chunks_exact(self.plane.max(1)).skip(c).step_by(self.channels)
    }
}

/// Sums of `terms(a[i], b[i])` in f64 (the CPU side is the reference the GPU's tree sums are
/// compared with), kept in eight lanes per sum so that the loop compiles to SIMD: summed one
/// after another, each sum is a chain of dependent adds the compiler may not reorder.
fn lane_sums<const K: usize>(a: &[f32], b: &[f32], terms: impl Fn(f64, f64) -> [f64; K]) -> [f64; K] {
    const LANES: usize = 8;
    let mut lanes = [[0.0f64; LANES]; K];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (ca, cb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            let t = terms(ca[l] as f64, cb[l] as f64);
            for k in 0..K {
                lanes[k][l] += t[k];
            }
        }
    }
    let mut sums = lanes.map(|l| l.iter().sum::<f64>());
    for (&a, &b) in ca.remainder().iter().zip(cb.remainder()) {
        let t = terms(a as f64, b as f64);
        for k in 0..K {
            sums[k] += t[k];
        }
    }
    sums
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BnConfig {
    pub epsilon: f32,
    pub momentum: f32,
}

impl Default for BnConfig {
    fn default() -> Self {
        BnConfig { epsilon: 1e-3, momentum: 0.99 }
    }
}

/// Per-channel state: learned scale and shift, running statistics.
pub struct BnParams<'a, T: ?Sized> {
    pub gamma: &'a T,
    pub beta: &'a T,
    pub running_mean: &'a T,
    pub running_var: &'a T,
}

/// Per-channel statistics of the last training forward pass, kept for the backward pass.
pub struct BnSaved<'a, T: ?Sized> {
    pub mean: &'a T,
    pub invstd: &'a T,
}

fn check(s: &BnShape, x: usize, y: usize, per_channel: &[(&str, usize)]) -> Result<()> {
    check_len("batchnorm", "input", x, s.len())?;
    check_len("batchnorm", "output", y, s.len())?;
    per_channel.iter().try_for_each(|&(name, len)| check_len("batchnorm", name, len, s.channels))
}

/// Training forward pass: writes y, the batch statistics (`mean`, `invstd`) and updates the
/// running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_train_cpu(
    s: BnShape,
    cfg: BnConfig,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &mut [f32],
    invstd: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    let lens = [("gamma", gamma.len()), ("beta", beta.len()), ("running mean", running_mean.len()), ("running variance", running_var.len()), ("mean", mean.len()), ("invstd", invstd.len())];
    check(&s, x.len(), y.len(), &lens)?;
    let n = s.count() as f64;
    let stats: Vec<(f64, f64)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mu = s.channel(x, c).map(|p| lane_sums(p, p, |v, _| [v])[0]).sum::<f64>() / n;
            let var = s.channel(x, c).map(|p| lane_sums(p, p, |v, _| [(v - mu) * (v - mu)])[0]).sum::<f64>() / n;
            (mu, var)
        })
        .collect();
    for (c, &(mu, var)) in stats.iter().enumerate() {
        mean[c] = mu as f32;
        invstd[c] = (1.0 / (var + cfg.epsilon as f64).sqrt()) as f32;
        running_mean[c] = cfg.momentum * running_mean[c] + (1.0 - cfg.momentum) * mu as f32;
        running_var[c] = cfg.momentum * running_var[c] + (1.0 - cfg.momentum) * var as f32;
    }
    normalize_cpu(&s, Activation::Identity, x, gamma, beta, mean, invstd, y);
    Ok(())
}

/// Inference forward pass from the running statistics, followed by a ReLU when `act` says so:
/// the ReLU after a batch norm then costs no pass of its own over the activations.
pub fn forward_infer_cpu(s: BnShape, cfg: BnConfig, act: Activation, x: &[f32], p: BnParams<'_, [f32]>, y: &mut [f32]) -> Result<()> {
    let lens = [("gamma", p.gamma.len()), ("beta", p.beta.len()), ("running mean", p.running_mean.len()), ("running variance", p.running_var.len())];
    check(&s, x.len(), y.len(), &lens)?;
    let invstd: Vec<f32> = p.running_var.iter().map(|&v| 1.0 / (v + cfg.epsilon).sqrt()).collect();
    normalize_cpu(&s, act, x, p.gamma, p.beta, p.running_mean, &invstd, y);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn normalize_cpu(s: &BnShape, act: Activation, x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], invstd: &[f32], y: &mut [f32]) {
    let plane = s.plane.max(1);
    y.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().with_min_len(items_per_task(plane)).for_each(|(i, (y, x))| {
        let c = i % s.channels;
        normalize_plane(x, [gamma[c], beta[c], mean[c], invstd[c]], act == Activation::Relu, y);
    });
}

widest_vectors! {
/// One channel's plane `x` normalised into `y`, then through a ReLU if `relu_after`.
fn normalize_plane(x: &[f32], params: [f32; 4], relu_after: bool, y: &mut [f32]) {
    let [gamma, beta, mean, invstd] = params;
    for (y, &x) in y.iter_mut().zip(x) {
        let v = gamma * (x - mean) * invstd + beta;
        *y = if relu_after { relu(v) } else { v };
    }
}
}

/// Training-mode gradients: writes dx, dgamma and dbeta.
pub fn backward_cpu(s: BnShape, x: &[f32], dy: &[f32], gamma: &[f32], saved: BnSaved<'_, [f32]>, dx: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32]) -> Result<()> {
    let lens = [("gamma", gamma.len()), ("mean", saved.mean.len()), ("invstd", saved.invstd.len()), ("dgamma", dgamma.len()), ("dbeta", dbeta.len())];
    check(&s, x.len(), dx.len(), &lens)?;
    check_len("batchnorm", "output gradient", dy.len(), s.len())?;
    let n = s.count() as f32;
    let xhat = |c: usize, v: f32| (v - saved.mean[c]) * saved.invstd[c];
    let sums: Vec<[f64; 2]> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let (mean, invstd) = (saved.mean[c] as f64, saved.invstd[c] as f64);
            s.channel(x, c).zip(s.channel(dy, c)).fold([0.0; 2], |acc, (x, dy)| {
                let plane = lane_sums(x, dy, |x, dy| [dy * (x - mean) * invstd, dy]);
                [acc[0] + plane[0], acc[1] + plane[1]]
            })
        })
        .collect();
    for (c, &[g, b]) in sums.iter().enumerate() {
        dgamma[c] = g as f32;
        dbeta[c] = b as f32;
    }
    let (dgamma, dbeta) = (&*dgamma, &*dbeta);
    let plane = s.plane.max(1);
    dx.par_chunks_mut(plane).zip(x.par_chunks(plane)).zip(dy.par_chunks(plane)).enumerate().with_min_len(items_per_task(plane)).for_each(|(i, ((dx, x), dy))| {
        let c = i % s.channels;
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *dx = gamma[c] * saved.invstd[c] / n * (n * dy - dbeta[c] - xhat(c, x) * dgamma[c]);
        }
    });
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    plane: u32,
    training: u32,
    epsilon: f32,
    momentum: f32,
    relu: u32,
    _pad: u32,
}

/// Refuses a ReLU fused into a training pass: the backward pass needs the normalised values.
pub fn check_fused(training: bool, act: Activation) -> Result<()> {
    if training && act == Activation::Relu {
        return Err(shape_err("batchnorm", "a fused ReLU is for inference only: training keeps the normalised values for the backward pass"));
    }
    Ok(())
}

/// Forward pass on the GPU. In training mode `saved` receives the batch statistics and the
/// running statistics are updated; in inference mode `saved` is scratch filled from them, and
/// `act` may fuse the ReLU that follows (training keeps the normalised values for the backward
/// pass, so it refuses one).
#[allow(clippy::too_many_arguments)]
pub fn forward_gpu(
    rec: &mut Recorder,
    s: BnShape,
    cfg: BnConfig,
    training: bool,
    act: Activation,
    x: &GpuBuffer<f32>,
    p: BnParams<'_, GpuBuffer<f32>>,
    saved: BnSaved<'_, GpuBuffer<f32>>,
    y: &GpuBuffer<f32>,
) -> Result<()> {
    let lens = [
        ("gamma", p.gamma.len()),
        ("beta", p.beta.len()),
        ("running mean", p.running_mean.len()),
        ("running variance", p.running_var.len()),
        ("mean", saved.mean.len()),
        ("invstd", saved.invstd.len()),
    ];
    check(&s, x.len(), y.len(), &lens)?;
    check_fused(training, act)?;
    let relu = (act == Activation::Relu) as u32;
    let params = Params { batch: s.batch as u32, channels: s.channels as u32, plane: s.plane as u32, training: training as u32, epsilon: cfg.epsilon, momentum: cfg.momentum, relu, _pad: 0 };
    let bindings = [x.all(), saved.mean.all().rw(), saved.invstd.all().rw(), p.running_mean.all().rw(), p.running_var.all().rw(), p.gamma.all(), p.beta.all(), y.all().rw()];
    rec.dispatch_linear("batchnorm_stats", &shaders::BATCHNORM_FORWARD, "stats", &params, &bindings, s.channels, 1)?;
    rec.dispatch_linear("batchnorm_normalize", &shaders::BATCHNORM_FORWARD, "normalize", &params, &bindings, s.len().div_ceil(ELEMENTS_PER_THREAD), 256)
}

pub fn backward_gpu(
    rec: &mut Recorder,
    s: BnShape,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    saved: BnSaved<'_, GpuBuffer<f32>>,
    dx: &GpuBuffer<f32>,
    dgamma: &GpuBuffer<f32>,
    dbeta: &GpuBuffer<f32>,
) -> Result<()> {
    let lens = [("gamma", gamma.len()), ("mean", saved.mean.len()), ("invstd", saved.invstd.len()), ("dgamma", dgamma.len()), ("dbeta", dbeta.len())];
    check(&s, x.len(), dx.len(), &lens)?;
    check_buf("batchnorm", "output gradient", dy, s.len())?;
    let params = [s.batch as u32, s.channels as u32, s.plane as u32, 0];
    let bindings = [x.all(), dy.all(), saved.mean.all(), saved.invstd.all(), dgamma.all().rw(), dbeta.all().rw(), gamma.all(), dx.all().rw()];
    rec.dispatch_linear("batchnorm_backward_reduce", &shaders::BATCHNORM_BACKWARD, "reduce", &params, &bindings, s.channels, 1)?;
    rec.dispatch_linear("batchnorm_backward_data", &shaders::BATCHNORM_BACKWARD, "data", &params, &bindings, s.len().div_ceil(ELEMENTS_PER_THREAD), 256)
}
