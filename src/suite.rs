//! The kernel suite: every kernel the two backends share, run through the GPU backend and
//! through the CPU reference on the same inputs, and compared with the tolerances of the native
//! tests. Shapes are not multiples of any workgroup or tile, batch 1, and the models' real
//! layers. It is written against [`Backend`] and the library's async API so that the same cases
//! run natively (`tests/suite.rs`, on lavapipe and GL) and in the browser (the page's suite,
//! on WebGPU against the CPU reference compiled to wasm): a shader the browser's compiler
//! rejects or miscompiles fails there, named.
//!
//! The detailed native tests (tests/kernels.rs and the others) also cover each kernel's own
//! entry points, naive oracles, chunking and refusals; this suite checks what a second
//! compiler and driver make of the shaders.

use crate::align;
use crate::augment::AugmentConfig;
use crate::detect::cpu::{self, Integrals};
use crate::detect::gpu::{integrals_gpu, resize_gpu};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::adam::AdamConfig;
use crate::kernels::batchnorm::{BnConfig, BnShape};
use crate::kernels::conv2d::{Activation, Conv2dShape, Padding, Precision};
use crate::kernels::conv2d_grouped::{GroupedConvShape, Pads};
use crate::kernels::dense::DenseShape;
use crate::kernels::dropout::Mask;
use crate::kernels::maxpool2d::PoolShape;
use crate::kernels::sgd::SgdConfig;
use crate::kernels::softmax_xent::XentShape;
use crate::kernels::upsample::UpsampleShape;
use crate::kernels::yunet_decode::{self, DecodeShape, RECORD};
use crate::nn::backend::{BnTensors, LossTensors};
use crate::nn::{Backend, Cpu, GpuBackend};
use crate::rng::Rng;
use image::GrayImage;
use serde::Serialize;

/// f32 sums in a different order: the GPU's tiles against the CPU's blocked gemm.
const SUM_TOL: f32 = 1e-4;
/// exp and log, which GPU drivers compute to a few ulps.
const TRANSCENDENTAL_TOL: f32 = 1e-5;

/// One kernel on one shape.
pub struct Case {
    pub name: String,
    op: Op,
    /// Largest |GPU - CPU| allowed, as a fraction of the largest |CPU| value of each output
    /// (0: bit for bit).
    tolerance: f32,
}

enum Op {
    Conv(Conv2dShape),
    Dense(DenseShape),
    MaxPool(PoolShape),
    ReluDropout(usize),
    BatchNorm(BnShape),
    Xent(XentShape),
    Adam(usize),
    Sgd(usize),
    GroupedConv(GroupedConvShape),
    Upsample(UpsampleShape),
    Add(usize),
    Sigmoid(usize),
    YunetDecode(DecodeShape),
    Warp {
        batch: usize,
        side: usize,
    },
    /// Bilinear, and the GPU contracts multiplies and adds the CPU rounds apart: one grey level.
    FaceCrops {
        width: usize,
        height: usize,
        faces: usize,
    },
    /// The Haar detector's pyramid resize and integral images: exact.
    Resize {
        from: (u32, u32),
        to: (u32, u32),
    },
    Integrals {
        width: u32,
        height: u32,
    },
}

/// What one case gave.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    /// The largest |GPU - CPU| over the case's outputs, as a fraction of each output's scale.
    pub worst: f32,
    pub tolerance: f32,
    /// Why it failed: the output that differed, or the error either side returned.
    pub detail: Option<String>,
    pub milliseconds: f64,
}

fn case(name: String, op: Op, tolerance: f32) -> Case {
    Case { name, op, tolerance }
}

/// Every case, in a fixed order.
pub fn cases() -> Vec<Case> {
    let conv = |batch, cin, hw, cout, k, padding| Conv2dShape::new(batch, cin, hw, cout, k, padding).expect("valid shape");
    let grouped = |batch, cin, hw, cout, k, groups, stride, pads| GroupedConvShape::new(batch, cin, hw, cout, k, groups, stride, pads).expect("valid shape");
    let mut all = Vec::new();
    let convs = [
        // The original model's first two layers and the VGG's second, at batch 1.
        conv(1, 1, (48, 48), 32, (3, 3), Padding::Valid),
        conv(1, 32, (46, 46), 64, (3, 3), Padding::Valid),
        conv(1, 64, (24, 24), 64, (3, 3), Padding::Same),
        // Odd shapes: 'same' and 'valid', kernels 1 to 7 wide, channels not multiples of 4.
        conv(3, 5, (13, 11), 7, (3, 3), Padding::Same),
        conv(2, 3, (9, 10), 67, (5, 5), Padding::Same),
        conv(2, 2, (7, 7), 3, (2, 2), Padding::Same),
        conv(1, 4, (6, 17), 3, (3, 5), Padding::Valid),
        conv(2, 3, (9, 14), 9, (2, 7), Padding::Valid),
        conv(3, 29, (9, 10), 11, (3, 3), Padding::Same),
    ];
    all.extend(convs.into_iter().map(|s| case(format!("conv2d {s:?}"), Op::Conv(s), SUM_TOL)));
    for (batch, inputs, outputs) in [(1, 37, 19), (5, 40, 12), (70, 36, 20), (4, 64, 1100), (1, 2048, 1024)] {
        let s = DenseShape::new(batch, inputs, outputs).expect("valid shape");
        all.push(case(format!("dense {s:?}"), Op::Dense(s), SUM_TOL));
    }
    for (batch, channels, hw, size) in [(1, 3, (7, 9), 2), (2, 5, (5, 5), 3), (2, 3, (9, 12), 2), (1, 64, (44, 44), 2)] {
        let s = PoolShape::new(batch, channels, hw, size).expect("valid shape");
        all.push(case(format!("maxpool2d {s:?}"), Op::MaxPool(s), 0.0));
    }
    all.extend([1, 257, 100_003].map(|n| case(format!("relu and dropout, {n} elements"), Op::ReluDropout(n), 0.0)));
    for s in [BnShape { batch: 3, channels: 5, plane: 63 }, BnShape { batch: 1, channels: 64, plane: 22 * 22 }, BnShape { batch: 4, channels: 1024, plane: 1 }] {
        all.push(case(format!("batchnorm {s:?}"), Op::BatchNorm(s), 1e-3));
    }
    for (batch, classes, smoothing, distill) in [(1, 7, 0.0, 0.0), (64, 7, 0.1, 0.0), (131, 3, 0.2, 0.0), (64, 7, 0.0, 0.5), (33, 7, 0.1, 1.0)] {
        let s = XentShape { batch, classes, smoothing, distill };
        all.push(case(format!("softmax cross-entropy {s:?}"), Op::Xent(s), TRANSCENDENTAL_TOL));
    }
    all.extend([1001, 100_003].map(|n| case(format!("adam, {n} parameters"), Op::Adam(n), 1e-6)));
    all.extend([1, 100_003].map(|n| case(format!("sgd, {n} parameters"), Op::Sgd(n), 1e-6)));
    let groupeds = [
        // YuNet at 320x320: the stem (stride 2), a depthwise 3x3, a pointwise and a head.
        grouped(1, 3, (320, 320), 16, (3, 3), 1, (2, 2), Pads::all(1)),
        grouped(1, 64, (40, 40), 64, (3, 3), 64, (1, 1), Pads::all(1)),
        grouped(1, 64, (80, 80), 64, (1, 1), 1, (1, 1), Pads::all(0)),
        grouped(1, 64, (10, 10), 10, (1, 1), 1, (1, 1), Pads::all(0)),
        // Odd planes, padding on two sides only, groups of 3, a depthwise patch too large for
        // workgroup memory.
        grouped(1, 16, (41, 27), 16, (3, 3), 16, (2, 2), Pads { top: 1, left: 0, bottom: 0, right: 1 }),
        grouped(2, 5, (41, 27), 19, (3, 3), 1, (2, 2), Pads { top: 0, left: 2, bottom: 1, right: 0 }),
        grouped(3, 6, (13, 11), 9, (3, 3), 3, (2, 1), Pads { top: 2, left: 1, bottom: 0, right: 1 }),
        grouped(1, 3, (60, 50), 3, (7, 7), 3, (3, 3), Pads::all(3)),
    ];
    all.extend(groupeds.into_iter().map(|s| case(format!("conv2d_grouped {s:?}"), Op::GroupedConv(s), SUM_TOL)));
    for s in [UpsampleShape::double(1, 64, (10, 10)), UpsampleShape::new(2, 3, (7, 5), (13, 11)), UpsampleShape::new(1, 2, (9, 9), (4, 5))] {
        let s = s.expect("valid shape");
        all.push(case(format!("upsample {s:?}"), Op::Upsample(s), 0.0));
    }
    all.extend([12, 257, 64 * 40 * 40].map(|n| case(format!("add, {n} elements"), Op::Add(n), 0.0)));
    all.extend([12, 257, 64 * 40 * 40].map(|n| case(format!("sigmoid, {n} elements"), Op::Sigmoid(n), 1e-6)));
    // Odd grids, a batch, a stride after others, and YuNet's stride 8 at 640x480; each list with
    // room for every cell, so that the GPU keeps the same records as the CPU.
    for (images, grid, stride, first, threshold) in [(1, (13, 7), 8, 0, 0.5), (3, (11, 5), 16, 1000, 0.3), (2, (80, 60), 8, 0, 0.8)] {
        let s = DecodeShape::new(images, grid, stride, first, grid.0 * grid.1, threshold).expect("valid shape");
        all.push(case(format!("yunet_decode {s:?}"), Op::YunetDecode(s), TRANSCENDENTAL_TOL));
    }
    // WGSL's division is not correctly rounded.
    all.extend([(1, 48), (5, 40), (3, 44)].map(|(batch, side)| case(format!("warp, {batch} images to {side}x{side}"), Op::Warp { batch, side }, 1e-5)));
    for (width, height, faces) in [(641, 479, 3), (37, 5, 1), (48, 48, 2)] {
        // One grey level either way (an f32 sum on the other side of a rounding edge): the
        // tolerance is relative to the brightest crop pixel, 128 or more in these random images.
        all.push(case(format!("face_crop, {faces} faces of a {width}x{height} image"), Op::FaceCrops { width, height, faces }, 1.0 / 128.0));
    }
    for (from, to) in [((37, 23), (20, 13)), ((512, 600), (300, 351)), ((7, 5), (7, 5))] {
        all.push(case(format!("resize {}x{} to {}x{}", from.0, from.1, to.0, to.1), Op::Resize { from, to }, 0.0));
    }
    for (width, height) in [(1, 1), (41, 27), (300, 351)] {
        all.push(case(format!("integral images of {width}x{height}"), Op::Integrals { width, height }, 0.0));
    }
    all
}

/// Runs `case` on `gpu` and on the CPU, and compares.
pub async fn run(gpu: &Gpu, case: &Case) -> Outcome {
    let started = web_time::Instant::now();
    let compared = compare(gpu, case).await;
    let milliseconds = started.elapsed().as_secs_f64() * 1e3;
    let (worst, detail) = match compared {
        Ok((worst, failing)) => (worst, failing),
        Err(e) => (f32::INFINITY, Some(e.to_string())),
    };
    Outcome { name: case.name.clone(), passed: detail.is_none(), worst, tolerance: case.tolerance, detail, milliseconds }
}

/// The worst difference over the case's outputs, and a description of the first output out of
/// tolerance.
async fn compare(gpu: &Gpu, case: &Case) -> Result<(f32, Option<String>)> {
    let (want, got) = match &case.op {
        Op::Resize { from, to } => {
            let src = grey_image(from.0, from.1, 3);
            let want = cpu::resize_exact(&src, to.0, to.1);
            let got = resize_gpu(gpu, &src, to.0, to.1).await?;
            (vec![("pixels", bytes_as_f32(want.as_raw()))], vec![bytes_as_f32(got.as_raw())])
        }
        Op::Integrals { width, height } => {
            let img = grey_image(*width, *height, 4);
            let (want, got) = (Integrals::new(&img, true), integrals_gpu(gpu, &img, true).await?);
            let tables = |i: &Integrals| [&i.sum, &i.sqsum, &i.tilted].map(|t| t.iter().map(|&v| v as f32).collect::<Vec<f32>>());
            let [sum, sqsum, tilted] = tables(&want);
            (vec![("sum", sum), ("squared sum", sqsum), ("tilted sum", tilted)], tables(&got).to_vec())
        }
        op => {
            let want = outputs(&Cpu, op).await?;
            let got = outputs(&GpuBackend::new(gpu), op).await?;
            (want, got.into_iter().map(|(_, values)| values).collect())
        }
    };
    let mut worst = 0.0f32;
    let mut failing = None;
    for ((name, want), got) in want.iter().zip(&got) {
        if want.len() != got.len() {
            failing.get_or_insert(format!("{name}: {} values from the GPU, {} from the CPU", got.len(), want.len()));
            continue;
        }
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            // A NaN on either side is infinitely off.
            let off = match (g - w).abs() / scale {
                _ if g == w => 0.0,
                off if off.is_nan() => f32::INFINITY,
                off => off,
            };
            if off > case.tolerance {
                failing.get_or_insert(format!("{name}: element {i} of {}: GPU {g}, CPU {w} (scale {scale})", want.len()));
            }
            worst = worst.max(off);
        }
    }
    Ok((worst, failing))
}

/// Seeded values in [lo, hi).
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

fn grey_image(width: u32, height: u32, seed: u64) -> GrayImage {
    let mut rng = Rng::new(seed);
    GrayImage::from_fn(width, height, |_, _| image::Luma([rng.below(256) as u8]))
}

fn bytes_as_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| b as f32).collect()
}

/// The op's outputs on backend `b`, each named, for inputs drawn from fixed seeds.
async fn outputs<B: Backend>(b: &B, op: &Op) -> Result<Vec<(&'static str, Vec<f32>)>> {
    let put = |data: &[f32]| -> Result<B::Tensor> {
        let t = b.tensor(data.len())?;
        b.write(&t, data)?;
        Ok(t)
    };
    let put_ints = |data: &[u32]| -> Result<B::Ints> {
        let t = b.ints(data.len())?;
        b.write_ints(&t, data)?;
        Ok(t)
    };
    let zeros = |n: usize| b.tensor(n);
    let mut out = Vec::new();
    match op {
        Op::Conv(s) => {
            let (x, w, bias, dy) =
                (put(&values(s.input_len(), 1, -1.0, 1.0))?, put(&values(s.weight_len(), 2, -0.3, 0.3))?, put(&values(s.cout, 3, -1.0, 1.0))?, put(&values(s.output_len(), 4, -1.0, 1.0))?);
            let (y, y_relu, dx, dw, db) = (zeros(s.output_len())?, zeros(s.output_len())?, zeros(s.input_len())?, zeros(s.weight_len())?, zeros(s.cout)?);
            b.conv2d_forward(*s, &x, &w, &bias, Activation::Identity, Precision::F32, &y)?;
            b.conv2d_forward(*s, &x, &w, &bias, Activation::Relu, Precision::F32, &y_relu)?;
            b.conv2d_backward_data(*s, &dy, &w, &dx)?;
            b.conv2d_backward_filter(*s, &x, &dy, &dw, &db)?;
            for (name, t) in [("forward", &y), ("forward with ReLU", &y_relu), ("data gradient", &dx), ("filter gradient", &dw), ("bias gradient", &db)] {
                out.push((name, b.read_async(t).await?));
            }
        }
        Op::Dense(s) => {
            let (x, w, bias, dy) = (
                put(&values(s.batch * s.inputs, 1, -1.0, 1.0))?,
                put(&values(s.inputs * s.outputs, 2, -0.1, 0.1))?,
                put(&values(s.outputs, 3, -1.0, 1.0))?,
                put(&values(s.batch * s.outputs, 4, -1.0, 1.0))?,
            );
            let (y, dx, dw, db) = (zeros(s.batch * s.outputs)?, zeros(s.batch * s.inputs)?, zeros(s.inputs * s.outputs)?, zeros(s.outputs)?);
            b.dense_forward(*s, &x, &w, &bias, &y)?;
            b.dense_backward_data(*s, &dy, &w, &dx)?;
            b.dense_backward_weights(*s, &x, &dy, &dw, &db)?;
            for (name, t) in [("forward", &y), ("data gradient", &dx), ("weight gradient", &dw), ("bias gradient", &db)] {
                out.push((name, b.read_async(t).await?));
            }
        }
        Op::MaxPool(s) => {
            // Coarse values tie often, as a ReLU's zeros do: both must pick the first maximum.
            let x = put(&values(s.input_len(), 1, -2.0, 2.0).iter().map(|v| v.round()).collect::<Vec<_>>())?;
            let dy = put(&values(s.output_len(), 2, -1.0, 1.0))?;
            let (y, argmax, dx, dx_relu) = (zeros(s.output_len())?, b.ints(s.output_len())?, zeros(s.input_len())?, zeros(s.input_len())?);
            b.maxpool_forward(*s, &x, &y, &argmax)?;
            b.maxpool_backward(*s, &dy, &argmax, None, &dx)?;
            b.maxpool_backward(*s, &dy, &argmax, Some(&y), &dx_relu)?;
            out.push(("forward", b.read_async(&y).await?));
            out.push(("argmax", b.read_ints_async(&argmax).await?.iter().map(|&i| i as f32).collect()));
            out.push(("gradient", b.read_async(&dx).await?));
            out.push(("gradient through a ReLU", b.read_async(&dx_relu).await?));
        }
        Op::ReluDropout(n) => {
            let (x, dy) = (put(&values(*n, 1, -1.0, 1.0))?, put(&values(*n, 2, -1.0, 1.0))?);
            let (y, dx, dropped) = (zeros(*n)?, zeros(*n)?, zeros(*n)?);
            b.relu_forward(&x, &y)?;
            b.relu_backward(&x, &dy, &dx)?;
            b.dropout(Mask::new(0.25, 1234)?, &x, &dropped)?;
            for (name, t) in [("relu", &y), ("relu gradient", &dx), ("dropout", &dropped)] {
                out.push((name, b.read_async(t).await?));
            }
        }
        Op::BatchNorm(s) => {
            let c = s.channels;
            let (x, dy) = (put(&values(s.len(), 1, -2.0, 3.0))?, put(&values(s.len(), 2, -1.0, 1.0))?);
            let (gamma, beta, running_mean, running_var) = (put(&values(c, 3, 0.5, 1.5))?, put(&values(c, 4, -1.0, 1.0))?, put(&values(c, 5, -1.0, 1.0))?, put(&values(c, 6, 0.5, 2.0))?);
            let (mean, invstd) = (zeros(c)?, zeros(c)?);
            let (y, y_infer, y_infer_relu, dx, dgamma, dbeta) = (zeros(s.len())?, zeros(s.len())?, zeros(s.len())?, zeros(s.len())?, zeros(c)?, zeros(c)?);
            // Inference may use the saved statistics' buffers as scratch: it gets its own.
            let (scratch_mean, scratch_invstd) = (zeros(c)?, zeros(c)?);
            let bn = |mean, invstd| BnTensors { gamma: &gamma, beta: &beta, running_mean: &running_mean, running_var: &running_var, mean, invstd };
            let cfg = BnConfig::default();
            b.batchnorm_forward(*s, cfg, true, Activation::Identity, &x, bn(&mean, &invstd), &y)?;
            b.batchnorm_backward(*s, &x, &dy, bn(&mean, &invstd), &dx, &dgamma, &dbeta)?;
            b.batchnorm_forward(*s, cfg, false, Activation::Identity, &x, bn(&scratch_mean, &scratch_invstd), &y_infer)?;
            b.batchnorm_forward(*s, cfg, false, Activation::Relu, &x, bn(&scratch_mean, &scratch_invstd), &y_infer_relu)?;
            let named = [("training output", &y), ("mean", &mean), ("inverse deviation", &invstd), ("running mean", &running_mean), ("running variance", &running_var)];
            for (name, t) in named.into_iter().chain([("data gradient", &dx), ("scale gradient", &dgamma), ("shift gradient", &dbeta), ("inference", &y_infer), ("inference with ReLU", &y_infer_relu)])
            {
                out.push((name, b.read_async(t).await?));
            }
        }
        Op::Xent(s) => {
            let logits = put(&values(s.batch * s.classes, 1, -8.0, 8.0))?;
            let labels = put_ints(&values(s.batch, 2, 0.0, s.classes as f32).iter().map(|&v| v as u32).collect::<Vec<_>>())?;
            let class_weight = put(&values(s.classes, 3, 0.5, 2.0))?;
            // A teacher's probabilities: rows of positive values scaled to sum to 1.
            let mut soft = values(s.batch * s.classes, 4, 0.01, 1.0);
            for row in soft.chunks_mut(s.classes) {
                let total: f32 = row.iter().sum();
                row.iter_mut().for_each(|q| *q /= total);
            }
            let soft = put(&soft)?;
            let (probs, row_loss, loss, correct, dlogits) = (zeros(s.batch * s.classes)?, zeros(s.batch)?, zeros(1)?, b.ints(1)?, zeros(s.batch * s.classes)?);
            b.xent_forward(*s, &logits, &labels, &soft, &class_weight, LossTensors { probs: &probs, row_loss: &row_loss, loss: &loss, correct: &correct })?;
            b.xent_backward(*s, &probs, &labels, &soft, &class_weight, &dlogits)?;
            out.push(("probabilities", b.read_async(&probs).await?));
            out.push(("loss", b.read_async(&loss).await?));
            out.push(("correct", b.read_ints_async(&correct).await?.iter().map(|&i| i as f32).collect()));
            out.push(("logit gradient", b.read_async(&dlogits).await?));
        }
        Op::Adam(n) | Op::Sgd(n) => {
            let (param, first, second) = (put(&values(*n, 1, -1.0, 1.0))?, put(&values(*n, 2, -0.1, 0.1))?, put(&values(*n, 3, 0.0, 0.01))?);
            for t in 1..=3 {
                let grad = put(&values(*n, 10 + t, -1.0, 1.0))?;
                match op {
                    Op::Adam(_) => b.adam(AdamConfig { lr: 1e-3, ..Default::default() }, t, &param, &grad, &first, &second)?,
                    _ => b.sgd(SgdConfig { lr: 0.01, momentum: 0.9, nesterov: true, weight_decay: 5e-4 }, t, &param, &grad, &first)?,
                }
            }
            out.push(("parameters", b.read_async(&param).await?));
            out.push(("first moment", b.read_async(&first).await?));
            if matches!(op, Op::Adam(_)) {
                out.push(("second moment", b.read_async(&second).await?));
            }
        }
        Op::GroupedConv(s) => {
            let (x, w, bias) = (put(&values(s.input_len(), 1, -1.0, 1.0))?, put(&values(s.weight_len(), 2, -0.3, 0.3))?, put(&values(s.cout, 3, -1.0, 1.0))?);
            let (y, y_relu) = (zeros(s.output_len())?, zeros(s.output_len())?);
            b.conv2d_grouped_forward(*s, &x, &w, &bias, Activation::Identity, &y)?;
            b.conv2d_grouped_forward(*s, &x, &w, &bias, Activation::Relu, &y_relu)?;
            out.push(("forward", b.read_async(&y).await?));
            out.push(("forward with ReLU", b.read_async(&y_relu).await?));
        }
        Op::Upsample(s) => {
            let (x, y) = (put(&values(s.input_len(), 1, -1.0, 1.0))?, zeros(s.output_len())?);
            b.upsample_forward(*s, &x, &y)?;
            out.push(("output", b.read_async(&y).await?));
        }
        Op::Add(n) => {
            let (x, other, sum, sum_relu) = (put(&values(*n, 1, -1.0, 1.0))?, put(&values(*n, 2, -1.0, 1.0))?, zeros(*n)?, zeros(*n)?);
            b.add_forward(&x, &other, Activation::Identity, &sum)?;
            b.add_forward(&x, &other, Activation::Relu, &sum_relu)?;
            out.push(("sum", b.read_async(&sum).await?));
            out.push(("sum with ReLU", b.read_async(&sum_relu).await?));
        }
        Op::Sigmoid(n) => {
            let mut x = values(*n, 1, -20.0, 20.0);
            // Inputs whose exponential overflows or underflows f32, and zeros of both signs.
            x.iter_mut().zip([f32::MAX, f32::MIN, 1e30, -1e30, 100.0, -100.0, 88.8, -88.8, 0.0, -0.0, 1e-30, -1e-30]).for_each(|(x, e)| *x = e);
            let (x, y) = (put(&x)?, zeros(*n)?);
            b.sigmoid_forward(&x, &y)?;
            out.push(("output", b.read_async(&y).await?));
        }
        Op::YunetDecode(s) => {
            let cells = s.images * s.cells();
            let heads = [put(&values(cells, 1, -0.1, 1.1))?, put(&values(cells, 2, -0.1, 1.1))?, put(&values(4 * cells, 3, -1.0, 1.0))?, put(&values(10 * cells, 4, -2.0, 2.0))?];
            let (counts, records) = (put_ints(&vec![0; s.images])?, zeros(s.images * s.capacity * RECORD)?);
            b.yunet_decode(*s, heads.each_ref(), &counts, &records)?;
            let (counts, records) = (b.read_ints_async(&counts).await?, b.read_async(&records).await?);
            // The GPU's threads fill a list in any order: the lists are compared in decoding order.
            let mut in_order = Vec::with_capacity(records.len());
            for (list, &count) in records.chunks_exact(s.capacity * RECORD).zip(&counts) {
                in_order.extend(yunet_decode::in_decoding_order(list, count as usize).concat());
            }
            out.push(("counts", counts.iter().map(|&c| c as f32).collect()));
            out.push(("records in decoding order", in_order));
        }
        Op::Warp { batch, side } => {
            let images: Vec<u8> = values(batch * crate::data::PIXELS, 1, 0.0, 256.0).iter().map(|&v| v as u8).collect();
            let augment = AugmentConfig { rotation_deg: 20.0, zoom: 0.2, shift: 0.1, horizontal_flip: true, erase_probability: 0.5, ..AugmentConfig::CROP };
            let mut rng = Rng::new(2);
            let augments: Vec<_> = (0..*batch).map(|_| augment.draw(*side, &mut rng)).collect();
            let warped = zeros(batch * side * side)?;
            b.warp(&images, &augments, *side, &warped)?;
            out.push(("warped", b.read_async(&warped).await?));
        }
        Op::FaceCrops { width, height, faces } => {
            let image: Vec<u8> = values(width * height, 1, 0.0, 256.0).iter().map(|&v| v as u8).collect();
            let mut rng = Rng::new(2);
            // Faces of 10 to 200 pixels between the eyes, turned up to 30 degrees, anywhere.
            let maps: Vec<_> = (0..*faces)
                .map(|_| {
                    let (cx, cy) = (rng.uniform(0.0, *width as f32), rng.uniform(0.0, *height as f32));
                    let (eyes, turn) = (rng.uniform(10.0, 200.0), rng.uniform(-0.5, 0.5));
                    let (dx, dy) = (eyes / 2.0 * turn.cos(), eyes / 2.0 * turn.sin());
                    let point = |x: f32, y: f32| [cx + x * turn.cos() - y * turn.sin(), cy + x * turn.sin() + y * turn.cos()];
                    align::aligned(&[[cx - dx, cy - dy], [cx + dx, cy + dy], point(0.0, eyes * 0.4), point(-eyes * 0.4, eyes * 0.8), point(eyes * 0.4, eyes * 0.8)])
                })
                .collect();
            let crops = b.face_crops_async(&image, (*width, *height), &maps).await?;
            out.push(("crops", bytes_as_f32(&crops)));
        }
        Op::Resize { .. } | Op::Integrals { .. } => unreachable!("run on the Gpu itself, in compare"),
    }
    Ok(out)
}
