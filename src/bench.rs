//! Kernel benchmarks: every op at the seed model's shapes for each of a list of batches (1, 64 and
//! 256 by default), on the GPU (timestamp queries where the adapter has them, wall clock
//! otherwise) and on the CPU backend, side by side in one run so the ratio is fair on a shared,
//! noisy machine.

use crate::error::Result;
use crate::gpu::{Gpu, GpuBuffer, Recorder};
use crate::kernels::adam::{self, AdamConfig};
use crate::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use crate::kernels::conv2d::{self, Activation, Conv2dShape, Padding};
use crate::kernels::dense::{self, DenseShape};
use crate::kernels::dropout::{self, Mask};
use crate::kernels::maxpool2d::{self, PoolShape};
use crate::kernels::relu;
use crate::kernels::softmax_xent::{self, XentOutputs, XentShape};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::rc::Rc;
use std::time::Instant;

/// What one run of a kernel accomplishes, to turn its time into a rate.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Work {
    /// Floating-point operations (compute-bound kernels).
    Flops(f64),
    /// Bytes read plus bytes written (memory-bound kernels).
    Bytes(f64),
}

impl Work {
    fn rate(&self, seconds: f64) -> String {
        match *self {
            Work::Flops(f) => format!("{:.2} GFLOP/s", f / seconds / 1e9),
            Work::Bytes(b) => format!("{:.2} GB/s", b / seconds / 1e9),
        }
    }
}

type GpuRun = Box<dyn Fn(&mut Recorder) -> Result<()>>;
type CpuRun = Box<dyn FnMut() -> Result<()>>;

struct Case {
    name: String,
    shape: String,
    work: Work,
    gpu: GpuRun,
    cpu: CpuRun,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    pub batch: usize,
    pub kernel: String,
    pub shape: String,
    pub work: Work,
    /// Median of the repetitions, and their highest minus their lowest.
    pub gpu_ms: f64,
    pub gpu_spread_ms: f64,
    /// A compute-bound kernel's GPU GFLOP/s as a percentage of the adapter's peak, the
    /// calibration FMA's GFLOP/s measured just before it (`fma_yardstick`).
    pub gpu_percent_of_fma: Option<f64>,
    /// The kernel's GPU GFLOP/s as a percentage of the calibration SGEMM's, measured just
    /// before it (`yardstick`).
    pub gpu_percent_of_sgemm: Option<f64>,
    /// A memory-bound kernel's GPU GB/s as a percentage of the calibration copy's, measured
    /// just before it.
    pub gpu_percent_of_copy: Option<f64>,
    /// The calibration this kernel's percentage divides by: SGEMM GFLOP/s or copy GB/s.
    pub yardstick: f64,
    /// The calibration FMA's GFLOP/s, for compute-bound kernels.
    pub fma_yardstick: Option<f64>,
    pub cpu_ms: f64,
    pub cpu_spread_ms: f64,
    /// CPU time / GPU time: above 1 the GPU is faster.
    pub gpu_speedup: f64,
    /// The GPU passes one run records, in order, each with its median time (timestamp queries
    /// only): where a kernel of several passes (packing, the product, a sum of splits) spends.
    pub gpu_passes: Vec<PassMedian>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PassMedian {
    pub pass: &'static str,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub adapter: String,
    /// The kernel tiles the adapter gets ([`Gpu::tiles`]).
    pub tiles: String,
    /// GFLOP/s of the calibration FMA (shaders/fma_calibration.wgsl, multiply-adds on
    /// registers alone) at the start of this run: the adapter's peak, timed again before each
    /// compute-bound kernel (its `fma_yardstick`).
    pub fma_gflops: f64,
    /// GFLOP/s of the calibration SGEMM (shaders/sgemm_calibration.wgsl) on this adapter at
    /// the start of this run; each compute-bound kernel's %sgemm uses the SGEMM timed again just
    /// before it (its `yardstick`).
    pub sgemm_gflops: f64,
    /// GB/s (read plus written) of the calibration copy (shaders/copy_calibration.wgsl) at the
    /// start; the memory-bound kernels' yardstick, timed again before each.
    pub copy_gbps: f64,
    pub gpu_timing: &'static str,
    pub cpu_threads: usize,
    pub repetitions: usize,
    pub batches: Vec<usize>,
    pub results: Vec<KernelResult>,
}

/// A bar on stderr for a long benchmark, with the stage it is at as its message (hidden when
/// stderr is not a terminal). Its length is the number of stages; a suite sets it.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} ({elapsed}, about {eta} left)").expect("valid template").progress_chars("=> "));
    bar
}

/// Median and (max - min) of the samples, in milliseconds.
fn summarize(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    (median, samples[samples.len() - 1] - samples[0])
}

/// Median and spread of a GPU run's time, and each of its passes' median.
fn time_gpu(gpu: &Gpu, run: &dyn Fn(&mut Recorder) -> Result<()>, reps: usize) -> Result<(f64, f64, Vec<PassMedian>)> {
    let mut samples = Vec::with_capacity(reps);
    let mut pass_samples: Vec<(&'static str, Vec<f64>)> = Vec::new();
    for rep in 0..=reps {
        let mut rec = gpu.recorder(true);
        let start = Instant::now();
        run(&mut rec)?;
        let passes = rec.finish()?.passes;
        let wall = start.elapsed().as_secs_f64() * 1e3;
        let ms = if gpu.timestamps { passes.iter().map(|p| p.nanos).sum::<f64>() / 1e6 } else { wall };
        if rep == 0 {
            continue; // warm-up: pipeline compilation, first touches
        }
        samples.push(ms);
        if gpu.timestamps {
            pass_samples.resize_with(passes.len(), || ("", Vec::new()));
            for (slot, p) in pass_samples.iter_mut().zip(&passes) {
                slot.0 = p.label;
                slot.1.push(p.nanos / 1e6);
            }
        }
    }
    let passes = pass_samples.into_iter().map(|(pass, s)| PassMedian { pass, ms: summarize(s).0 }).collect();
    let (median, spread) = summarize(samples);
    Ok((median, spread, passes))
}

fn time_cpu(run: &mut CpuRun, reps: usize) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let start = Instant::now();
        run()?;
        if rep > 0 {
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(summarize(samples))
}

fn seeded(n: usize, seed: u32) -> Vec<f32> {
    // Cheap deterministic values in [-1, 1): the benchmark only needs realistic magnitudes.
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 8) as f32 / (1 << 23) as f32 - 1.0).collect()
}

/// The forward pass and both gradients of one convolution; `data_grad` false leaves out the
/// gradient with respect to the input, which training never computes for the first layer.
fn conv_cases(gpu: &Gpu, name: &str, s: Conv2dShape, data_grad: bool) -> Result<Vec<Case>> {
    let x = seeded(s.input_len(), 1);
    let w: Vec<f32> = seeded(s.weight_len(), 2).iter().map(|v| v * 0.1).collect();
    let b = seeded(s.cout, 3);
    let dy = seeded(s.output_len(), 4);
    let g = Rc::new((gpu.upload(&x)?, gpu.upload(&w)?, gpu.upload(&b)?, gpu.upload(&dy)?, gpu.zeros(s.output_len())?, gpu.zeros(s.input_len())?, gpu.zeros(s.weight_len())?, gpu.zeros(s.cout)?));
    let shape = format!("{}x{}x{}x{} k{}x{} -> {}", s.batch, s.cin, s.h, s.w, s.kh, s.kw, s.cout);
    let work = Work::Flops(s.flops());
    let (g1, g2, g3) = (g.clone(), g.clone(), g);
    let (x1, w1, b1) = (x.clone(), w.clone(), b);
    let (dy2, w2) = (dy.clone(), w);
    let mut y = vec![0.0; s.output_len()];
    let mut dx = vec![0.0; s.input_len()];
    let (mut dw, mut db) = (vec![0.0; s.weight_len()], vec![0.0; s.cout]);
    let mut cases = vec![Case {
        name: format!("{name} forward"),
        shape: shape.clone(),
        work,
        gpu: Box::new(move |rec| conv2d::forward_gpu(rec, s, &g1.0, &g1.1, &g1.2, Activation::Relu, &g1.4)),
        cpu: Box::new(move || conv2d::forward_cpu(s, &x1, &w1, Some(&b1), Activation::Relu, &mut y)),
    }];
    if data_grad {
        cases.push(Case {
            name: format!("{name} backward data"),
            shape: shape.clone(),
            work,
            gpu: Box::new(move |rec| conv2d::backward_data_gpu(rec, s, &g2.3, &g2.1, &g2.5)),
            cpu: Box::new(move || conv2d::backward_data_cpu(s, &dy2, &w2, &mut dx)),
        });
    }
    cases.push(Case {
        name: format!("{name} backward filter"),
        shape,
        work,
        gpu: Box::new(move |rec| conv2d::backward_filter_gpu(rec, s, &g3.0, &g3.3, &g3.6, &g3.7)),
        cpu: Box::new(move || conv2d::backward_filter_cpu(s, &x, &dy, &mut dw, &mut db)),
    });
    Ok(cases)
}

fn dense_cases(gpu: &Gpu, name: &str, s: DenseShape) -> Result<Vec<Case>> {
    let x = seeded(s.batch * s.inputs, 5);
    let w: Vec<f32> = seeded(s.inputs * s.outputs, 6).iter().map(|v| v * 0.05).collect();
    let b = seeded(s.outputs, 7);
    let dy = seeded(s.batch * s.outputs, 8);
    let g = Rc::new((gpu.upload(&x)?, gpu.upload(&w)?, gpu.upload(&b)?, gpu.upload(&dy)?, gpu.zeros(dy.len())?, gpu.zeros(x.len())?, gpu.zeros(w.len())?, gpu.zeros(s.outputs)?));
    let shape = format!("{}x{} -> {}", s.batch, s.inputs, s.outputs);
    // A handful of rows make a matrix-vector product, bound by reading W: judged by the bytes
    // it moves against the copy (as dense.rs switches to its matrix-vector pipeline).
    let work = if s.batch <= 4 { Work::Bytes(4.0 * (s.batch * s.inputs + s.inputs * s.outputs + s.batch * s.outputs) as f64) } else { Work::Flops(s.flops()) };
    let (g1, g2, g3) = (g.clone(), g.clone(), g);
    let (x1, w1) = (x.clone(), w.clone());
    let dy2 = dy.clone();
    let (mut y, mut dx, mut dw, mut db) = (vec![0.0; dy.len()], vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.outputs]);
    Ok(vec![
        Case {
            name: format!("{name} forward"),
            shape: shape.clone(),
            work,
            gpu: Box::new(move |rec| dense::forward_gpu(rec, s, &g1.0, &g1.1, &g1.2, &g1.4)),
            cpu: Box::new(move || dense::forward_cpu(s, &x1, &w1, &b, &mut y)),
        },
        Case {
            name: format!("{name} backward data"),
            shape: shape.clone(),
            work,
            gpu: Box::new(move |rec| dense::backward_data_gpu(rec, s, &g2.3, &g2.1, &g2.5)),
            cpu: Box::new(move || dense::backward_data_cpu(s, &dy2, &w, &mut dx)),
        },
        Case {
            name: format!("{name} backward weights"),
            shape,
            work,
            gpu: Box::new(move |rec| dense::backward_weights_gpu(rec, s, &g3.0, &g3.3, &g3.6, &g3.7)),
            cpu: Box::new(move || dense::backward_weights_cpu(s, &x, &dy, &mut dw, &mut db)),
        },
    ])
}

/// The calibration SGEMM at another product's shape (m x k times k x n, rounded up to what it
/// takes: m and n to multiples of 8, k of 4): what a plain product reaches at a layer's shape,
/// beside that layer's kernels, when the shape and not the kernel limits them.
fn sgemm_case(gpu: &Gpu, layer: &str, (m, n, k): (usize, usize, usize)) -> Result<Case> {
    let (m, n, k) = (m.next_multiple_of(8), n.next_multiple_of(8), k.next_multiple_of(4));
    let (a, b) = (seeded(m * k, 11), seeded(k * n, 12));
    let g = (gpu.upload(&a)?, gpu.upload(&b)?, gpu.zeros(m * n)?);
    let mut c = vec![0.0; m * n];
    Ok(Case {
        name: format!("plain SGEMM, {layer}'s shape"),
        shape: format!("{m}x{k} x {k}x{n}"),
        work: Work::Flops(2.0 * (m * n * k) as f64),
        gpu: Box::new(move |rec| crate::kernels::calibration::sgemm_gpu(rec, (m, n, k), &g.0, &g.1, &g.2)),
        cpu: Box::new(move || {
            crate::kernels::sgemm(m, n, k, crate::kernels::MatRef::rows(&a, k), crate::kernels::MatRef::rows(&b, n), &mut c, false, rayon::current_num_threads());
            Ok(())
        }),
    })
}

fn pool_cases(gpu: &Gpu, name: &str, s: PoolShape) -> Result<Vec<Case>> {
    let x = seeded(s.input_len(), 9);
    let dy = seeded(s.output_len(), 10);
    let g = Rc::new((gpu.upload(&x)?, gpu.zeros::<f32>(s.output_len())?, gpu.zeros::<u32>(s.output_len())?, gpu.upload(&dy)?, gpu.zeros::<f32>(s.input_len())?));
    let shape = format!("{} planes {}x{} / {}", s.planes, s.h, s.w, s.size);
    // Forward reads x, writes y and argmax; backward reads dy and argmax, writes dx.
    let fwd = Work::Bytes(4.0 * (s.input_len() + 2 * s.output_len()) as f64);
    let bwd = Work::Bytes(4.0 * (s.input_len() + 2 * s.output_len()) as f64);
    let g2 = g.clone();
    let (mut y, mut arg) = (vec![0.0; s.output_len()], vec![0u32; s.output_len()]);
    maxpool2d::forward_cpu(s, &x, &mut y, &mut arg)?;
    let arg2 = arg.clone();
    let mut dx = vec![0.0; s.input_len()];
    Ok(vec![
        Case {
            name: format!("{name} forward"),
            shape: shape.clone(),
            work: fwd,
            gpu: Box::new(move |rec| maxpool2d::forward_gpu(rec, s, &g.0, &g.1, &g.2)),
            cpu: Box::new(move || maxpool2d::forward_cpu(s, &x, &mut y, &mut arg)),
        },
        Case {
            name: format!("{name} backward"),
            shape,
            work: bwd,
            gpu: Box::new(move |rec| maxpool2d::backward_gpu(rec, s, &g2.3, &g2.2, None, &g2.4)),
            cpu: Box::new(move || maxpool2d::backward_cpu(s, &dy, &arg2, None, &mut dx)),
        },
    ])
}

fn elementwise_cases(gpu: &Gpu, n: usize) -> Result<Vec<Case>> {
    let x = seeded(n, 11);
    let dy = seeded(n, 12);
    let g = Rc::new((gpu.upload(&x)?, gpu.upload(&dy)?, gpu.zeros::<f32>(n)?));
    let (g1, g2, g3) = (g.clone(), g.clone(), g);
    let shape = format!("{n} elements");
    let (x1, x2, x3) = (x.clone(), x.clone(), x);
    let (mut y1, mut y2, mut y3) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mask = Mask::new(0.25, 42)?;
    Ok(vec![
        Case {
            name: "relu forward".into(),
            shape: shape.clone(),
            work: Work::Bytes(8.0 * n as f64),
            gpu: Box::new(move |rec| relu::forward_gpu(rec, &g1.0, &g1.2)),
            cpu: Box::new(move || relu::forward_cpu(&x1, &mut y1)),
        },
        Case {
            name: "relu backward".into(),
            shape: shape.clone(),
            work: Work::Bytes(12.0 * n as f64),
            gpu: Box::new(move |rec| relu::backward_gpu(rec, &g2.0, &g2.1, &g2.2)),
            cpu: Box::new(move || relu::backward_cpu(&x2, &dy, &mut y2)),
        },
        Case {
            name: "dropout 0.25".into(),
            shape,
            work: Work::Bytes(8.0 * n as f64),
            gpu: Box::new(move |rec| dropout::apply_gpu(rec, mask, &g3.0, &g3.2)),
            cpu: Box::new(move || dropout::apply_cpu(mask, &x3, &mut y3)),
        },
    ])
}

fn xent_adam_bn_cases(gpu: &Gpu, batch: usize) -> Result<Vec<Case>> {
    let mut cases = Vec::new();

    let s = XentShape { batch, classes: 7, smoothing: 0.0 };
    let logits = seeded(batch * 7, 13);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    let weights = vec![1.0f32; 7];
    struct XentBufs {
        logits: GpuBuffer<f32>,
        labels: GpuBuffer<u32>,
        weights: GpuBuffer<f32>,
        probs: GpuBuffer<f32>,
        rows: GpuBuffer<f32>,
        loss: GpuBuffer<f32>,
        correct: GpuBuffer<u32>,
        grad: GpuBuffer<f32>,
    }
    let b = XentBufs {
        logits: gpu.upload(&logits)?,
        labels: gpu.upload(&labels)?,
        weights: gpu.upload(&weights)?,
        probs: gpu.zeros(batch * 7)?,
        rows: gpu.zeros(batch)?,
        loss: gpu.zeros(1)?,
        correct: gpu.zeros(1)?,
        grad: gpu.zeros(batch * 7)?,
    };
    let (mut probs, mut grad) = (vec![0.0; batch * 7], vec![0.0; batch * 7]);
    cases.push(Case {
        name: "softmax-xent fwd+bwd".into(),
        shape: format!("{batch}x7"),
        work: Work::Bytes(4.0 * (4 * batch * 7 + 2 * batch) as f64),
        gpu: Box::new(move |rec| {
            let out = XentOutputs { probs: &b.probs, row_loss: &b.rows, loss: &b.loss, correct: &b.correct };
            softmax_xent::forward_gpu(rec, s, &b.logits, &b.labels, &b.weights, out)?;
            softmax_xent::backward_gpu(rec, s, &b.probs, &b.labels, &b.weights, &b.grad)
        }),
        cpu: Box::new(move || {
            softmax_xent::forward_cpu(s, &logits, &labels, &weights, &mut probs)?;
            softmax_xent::backward_cpu(s, &probs, &labels, &weights, &mut grad)
        }),
    });

    let n = 2_345_607; // the seed model's parameters
    let cfg = AdamConfig::default();
    let grad = seeded(n, 14);
    let gb = (gpu.upload(&seeded(n, 15))?, gpu.upload(&grad)?, gpu.zeros::<f32>(n)?, gpu.zeros::<f32>(n)?);
    let (mut p, mut m, mut v) = (seeded(n, 15), vec![0.0; n], vec![0.0; n]);
    cases.push(Case {
        name: "adam".into(),
        shape: format!("{n} parameters"),
        work: Work::Bytes(4.0 * 7.0 * n as f64),
        gpu: Box::new(move |rec| adam::step_gpu(rec, cfg, 10, &gb.0, &gb.1, &gb.2, &gb.3)),
        cpu: Box::new(move || adam::step_cpu(cfg, 10, &mut p, &grad, &mut m, &mut v)),
    });

    let s = BnShape { batch, channels: 64, plane: 44 * 44 };
    let bn = BnConfig::default();
    let x = seeded(s.len(), 16);
    let dy = seeded(s.len(), 17);
    let ones = vec![1.0f32; 64];
    let zeros = vec![0.0f32; 64];
    let c = || gpu.upload(&ones);
    let bufs = Rc::new((gpu.upload(&x)?, gpu.upload(&dy)?, c()?, c()?, c()?, c()?, c()?, c()?, c()?, c()?, gpu.zeros::<f32>(s.len())?));
    let b2 = bufs.clone();
    let x2 = x.clone();
    let (mut rm, mut rv, mut mean, mut invstd, mut y) = (zeros.clone(), ones.clone(), zeros.clone(), ones.clone(), vec![0.0; s.len()]);
    let (mut dx, mut dg, mut dbeta) = (vec![0.0; s.len()], zeros.clone(), zeros.clone());
    let (gamma, beta) = (ones.clone(), zeros);
    let (mean2, invstd2, gamma2) = (vec![0.0f32; 64], ones.clone(), ones);
    let shape = format!("{}x{}x{}", s.batch, s.channels, s.plane);
    cases.push(Case {
        name: "batchnorm forward (train)".into(),
        shape: shape.clone(),
        work: Work::Bytes(4.0 * 3.0 * s.len() as f64),
        gpu: Box::new(move |rec| {
            let p = BnParams { gamma: &bufs.2, beta: &bufs.3, running_mean: &bufs.4, running_var: &bufs.5 };
            batchnorm::forward_gpu(rec, s, bn, true, &bufs.0, p, BnSaved { mean: &bufs.6, invstd: &bufs.7 }, &bufs.10)
        }),
        cpu: Box::new(move || batchnorm::forward_train_cpu(s, bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut mean, &mut invstd, &mut y)),
    });
    cases.push(Case {
        name: "batchnorm backward".into(),
        shape,
        work: Work::Bytes(4.0 * 5.0 * s.len() as f64),
        gpu: Box::new(move |rec| batchnorm::backward_gpu(rec, s, &b2.0, &b2.1, &b2.2, BnSaved { mean: &b2.6, invstd: &b2.7 }, &b2.10, &b2.8, &b2.9)),
        cpu: Box::new(move || batchnorm::backward_cpu(s, &x2, &dy, &gamma2, BnSaved { mean: &mean2, invstd: &invstd2 }, &mut dx, &mut dg, &mut dbeta)),
    });
    Ok(cases)
}

/// Every kernel at the seed model's shapes for `batch` images.
fn cases(gpu: &Gpu, batch: usize) -> Result<Vec<Case>> {
    let conv = |cin, hw, cout| Conv2dShape::new(batch, cin, (hw, hw), cout, (3, 3), Padding::Valid);
    let mut all = Vec::new();
    all.extend(conv_cases(gpu, "conv1 1->32", conv(1, 48, 32)?, false)?);
    all.extend(conv_cases(gpu, "conv2 32->64", conv(32, 46, 64)?, true)?);
    all.extend(conv_cases(gpu, "conv3 64->128", conv(64, 22, 128)?, true)?);
    all.extend(conv_cases(gpu, "conv4 128->128", conv(128, 10, 128)?, true)?);
    all.extend(pool_cases(gpu, "maxpool1", PoolShape::new(batch, 64, (44, 44), 2)?)?);
    all.extend(pool_cases(gpu, "maxpool2", PoolShape::new(batch, 128, (20, 20), 2)?)?);
    all.extend(dense_cases(gpu, "dense1 2048->1024", DenseShape::new(batch, 2048, 1024)?)?);
    all.extend(dense_cases(gpu, "dense2 1024->7", DenseShape::new(batch, 1024, 7)?)?);
    // The two layers whose shapes keep them far below the calibration, beside the same plain
    // SGEMM at their product's shape: conv1 as output channels x taps times taps x outputs
    // (9 taps: 9 multiply-adds per output written), dense2 as batch x 1024 times 1024 x 7.
    all.push(sgemm_case(gpu, "conv1", (32, batch * 46 * 46, 9))?);
    all.push(sgemm_case(gpu, "dense2", (batch, 7, 1024))?);
    all.extend(elementwise_cases(gpu, batch * 64 * 44 * 44)?);
    all.extend(xent_adam_bn_cases(gpu, batch)?);
    Ok(all)
}

/// The yardsticks: multiply-adds on registers alone (the peak), a plain, well-shaped 1024^3
/// product and a 64 MiB vec4 copy, set up once and timed again before each kernel. On a shared
/// host their speed moves between runs by more than a kernel's does (lavapipe's SGEMM: 19-31
/// GFLOP/s over a day here), so a kernel's percentages are taken against the calibrations
/// measured just before it.
struct Calibration {
    fma: GpuRun,
    fma_flops: f64,
    sgemm: GpuRun,
    sgemm_flops: f64,
    copy: GpuRun,
    copy_bytes: f64,
}

/// Iterations per thread of the FMA calibration: 32,768 multiply-adds, so that a thread's
/// setup and store are lost beside them (at 1 iteration lavapipe reached half the rate).
const FMA_ITERATIONS: u32 = 256;

/// The FMA calibration's run should take about this long, so that timing and launch costs are
/// small beside it.
const FMA_TARGET_MS: f64 = 20.0;

/// The threads that make the FMA calibration take about [`FMA_TARGET_MS`]: doubled from one
/// workgroup until a run takes a quarter of that, which only happens once they fill the
/// adapter (lavapipe: a few thousand; a large GPU: millions), then scaled.
fn fma_threads(gpu: &Gpu) -> Result<usize> {
    let mut threads = 256usize;
    loop {
        let sums = gpu.zeros::<f32>(threads)?;
        let (ms, _, _) = time_gpu(gpu, &|rec| crate::kernels::calibration::fma_gpu(rec, threads, FMA_ITERATIONS, &sums), 1)?;
        if ms >= FMA_TARGET_MS / 4.0 || threads >= 1 << 24 {
            let scaled = (threads as f64 * FMA_TARGET_MS / ms.max(1e-3)) as usize;
            // Each thread writes one float, within what one binding may hold.
            let most = (gpu.binding_limit() as usize / 4).min(threads * 8) / 256 * 256;
            return Ok(scaled.next_multiple_of(256).clamp(256, most.max(256)));
        }
        threads *= 2;
    }
}

impl Calibration {
    fn new(gpu: &Gpu) -> Result<Calibration> {
        let n = 1024usize;
        let a = gpu.upload(&seeded(n * n, 20))?;
        let b = gpu.upload(&seeded(n * n, 21))?;
        let c = gpu.zeros::<f32>(n * n)?;
        let len = (16usize << 20).min(gpu.binding_limit() as usize / 4) / 4 * 4;
        let src = gpu.upload(&seeded(len, 22))?;
        let dst = gpu.zeros::<f32>(len)?;
        let threads = fma_threads(gpu)?;
        let sums = gpu.zeros::<f32>(threads)?;
        Ok(Calibration {
            fma: Box::new(move |rec| crate::kernels::calibration::fma_gpu(rec, threads, FMA_ITERATIONS, &sums)),
            fma_flops: crate::kernels::calibration::FMA_FLOPS_PER_ITERATION * threads as f64 * FMA_ITERATIONS as f64,
            sgemm: Box::new(move |rec| crate::kernels::calibration::sgemm_gpu(rec, (n, n, n), &a, &b, &c)),
            sgemm_flops: 2.0 * (n * n * n) as f64,
            copy: Box::new(move |rec| crate::kernels::calibration::copy_gpu(rec, len, &src, &dst)),
            copy_bytes: 2.0 * 4.0 * len as f64,
        })
    }

    /// GFLOP/s of the FMA calibration, the adapter's peak (median of `reps`).
    fn fma_gflops(&self, gpu: &Gpu, reps: usize) -> Result<f64> {
        let (ms, _, _) = time_gpu(gpu, &self.fma, reps)?;
        Ok(self.fma_flops / (ms / 1e3) / 1e9)
    }

    /// GFLOP/s of the SGEMM (median of `reps`).
    fn sgemm_gflops(&self, gpu: &Gpu, reps: usize) -> Result<f64> {
        let (ms, _, _) = time_gpu(gpu, &self.sgemm, reps)?;
        Ok(self.sgemm_flops / (ms / 1e3) / 1e9)
    }

    /// GB/s of the copy, read plus written (median of `reps`).
    fn copy_gbps(&self, gpu: &Gpu, reps: usize) -> Result<f64> {
        let (ms, _, _) = time_gpu(gpu, &self.copy, reps)?;
        Ok(self.copy_bytes / (ms / 1e3) / 1e9)
    }

    /// The yardsticks for `work`, measured now: the SGEMM's GFLOP/s and the FMA's, or the
    /// copy's GB/s alone.
    fn for_work(&self, gpu: &Gpu, work: Work, reps: usize) -> Result<(f64, Option<f64>)> {
        match work {
            Work::Flops(_) => Ok((self.sgemm_gflops(gpu, reps)?, Some(self.fma_gflops(gpu, reps)?))),
            Work::Bytes(_) => Ok((self.copy_gbps(gpu, reps)?, None)),
        }
    }
}

/// The adapter's measured peaks: (FMA GFLOP/s, SGEMM GFLOP/s, copy GB/s).
pub struct Peaks {
    pub fma_gflops: f64,
    pub sgemm_gflops: f64,
    pub copy_gbps: f64,
}

/// The batches `mien bench kernels` and `cargo bench` time by default: latency, the seed model's
/// training batch, and a larger one where a fast GPU's launch overhead matters less.
pub const DEFAULT_BATCHES: [usize; 3] = [1, 64, 256];

/// Runs every kernel case `reps` times (after one warm-up) on the GPU and on the CPU backend,
/// for each batch in turn. `filter` keeps the cases whose name contains it; `bar` shows which
/// is running.
pub fn bench_kernels(
    gpu: &Gpu,
    batches: &[usize],
    reps: usize,
    filter: Option<&str>,
    bar: &ProgressBar,
    calibrated: impl FnOnce(&Peaks),
    mut progress: impl FnMut(&KernelResult),
) -> Result<KernelReport> {
    // The calibration is a stage of the bar's, the kernels the rest (counted once known).
    bar.set_length(1);
    bar.set_message("calibration SGEMM and copy");
    let calibration = Calibration::new(gpu)?;
    let peaks = Peaks { fma_gflops: calibration.fma_gflops(gpu, reps)?, sgemm_gflops: calibration.sgemm_gflops(gpu, reps)?, copy_gbps: calibration.copy_gbps(gpu, reps)? };
    bar.inc(1);
    bar.suspend(|| calibrated(&peaks));
    let Peaks { fma_gflops, sgemm_gflops, copy_gbps } = peaks;
    let mut results = Vec::new();
    // One batch's cases at a time: at batch 256 their buffers alone take about a gigabyte.
    for &batch in batches {
        let batch_cases: Vec<Case> = cases(gpu, batch)?.into_iter().filter(|c| filter.is_none_or(|f| c.name.contains(f))).collect();
        if bar.length() == Some(1) {
            // Every batch has the same kernels.
            bar.set_length(1 + (batch_cases.len() * batches.len()) as u64);
        }
        for mut case in batch_cases {
            bar.set_message(format!("batch {batch}: {}", case.name));
            let (yardstick, fma_yardstick) = calibration.for_work(gpu, case.work, reps)?;
            let (gpu_ms, gpu_spread_ms, gpu_passes) = time_gpu(gpu, &case.gpu, reps)?;
            let (cpu_ms, cpu_spread_ms) = time_cpu(&mut case.cpu, reps)?;
            let percent_of = |rate: f64| 100.0 * match case.work {
                Work::Flops(f) | Work::Bytes(f) => f / (gpu_ms / 1e3) / 1e9 / rate,
            };
            let (of_sgemm, of_copy) = match case.work {
                Work::Flops(_) => (Some(percent_of(yardstick)), None),
                Work::Bytes(_) => (None, Some(percent_of(yardstick))),
            };
            let result = KernelResult {
                batch,
                kernel: case.name,
                shape: case.shape,
                work: case.work,
                gpu_ms,
                gpu_spread_ms,
                gpu_percent_of_fma: fma_yardstick.map(percent_of),
                gpu_percent_of_sgemm: of_sgemm,
                gpu_percent_of_copy: of_copy,
                cpu_ms,
                cpu_spread_ms,
                gpu_speedup: cpu_ms / gpu_ms,
                gpu_passes,
                yardstick,
                fma_yardstick,
            };
            bar.inc(1);
            progress(&result);
            results.push(result);
        }
    }
    Ok(KernelReport {
        adapter: gpu.describe(),
        tiles: gpu.tiles(),
        fma_gflops,
        sgemm_gflops,
        copy_gbps,
        gpu_timing: gpu.timing(),
        cpu_threads: rayon::current_num_threads(),
        repetitions: reps,
        batches: batches.to_vec(),
        results,
    })
}

/// The kernel benchmark's first line: the adapter, how it is timed and the tiles it gets.
pub fn adapter_line(gpu: &Gpu) -> String {
    format!("GPU: {} ({}; {})", gpu.describe(), gpu.timing(), gpu.tiles())
}

/// The lowest and highest of the values `pick` finds among the results (a calibration's rate
/// measured before each kernel).
pub fn range(report: &KernelReport, pick: impl Fn(&KernelResult) -> Option<f64>) -> Option<(f64, f64)> {
    let values: Vec<f64> = report.results.iter().filter_map(pick).collect();
    let lo = values.iter().copied().reduce(f64::min)?;
    Some((lo, values.iter().copied().fold(lo, f64::max)))
}

fn table_header() -> String {
    format!(
        "{:<34} {:<28} {:>10} {:>8} {:>16} {:>6} {:>7} {:>10} {:>8} {:>16} {:>8}\n{}",
        "kernel",
        "shape",
        "GPU ms",
        "spread",
        "GPU rate",
        "%peak",
        "%sgemm",
        "CPU ms",
        "spread",
        "CPU rate",
        "GPU/CPU",
        "-".repeat(161)
    )
}

/// Prints each kernel's row, with a heading and the table's header before a batch's first, above
/// `bar`.
pub fn row_printer(bar: &ProgressBar) -> impl FnMut(&KernelResult) {
    let bar = bar.clone();
    let mut last_batch = None;
    move |r| {
        bar.suspend(|| {
            if last_batch != Some(r.batch) {
                println!("\nbatch {}\n{}", r.batch, table_header());
                last_batch = Some(r.batch);
            }
            println!("{}", table_row(r));
        })
    }
}

/// A kernel's row, and under it its GPU passes when there are several.
fn table_row(r: &KernelResult) -> String {
    let mut row = format!(
        "{:<34} {:<28} {:>10.3} {:>8} {:>16} {:>6} {:>7} {:>10.3} {:>8} {:>16} {:>7.3}x",
        r.kernel,
        r.shape,
        r.gpu_ms,
        format!("±{:.3}", r.gpu_spread_ms),
        r.work.rate(r.gpu_ms / 1e3),
        r.gpu_percent_of_fma.or(r.gpu_percent_of_copy).map_or(String::new(), |p| format!("{p:.0}%")),
        r.gpu_percent_of_sgemm.map_or(String::new(), |p| format!("{p:.0}%")),
        r.cpu_ms,
        format!("±{:.3}", r.cpu_spread_ms),
        r.work.rate(r.cpu_ms / 1e3),
        r.gpu_speedup
    );
    if r.gpu_passes.len() > 1 {
        let passes: Vec<String> = r.gpu_passes.iter().map(|p| format!("{} {:.3}", p.pass, p.ms)).collect();
        row.push_str(&format!("\n    passes (ms): {}", passes.join(", ")));
    }
    row
}

/// Face-detection speed on one frame size.
#[derive(Clone, Debug, Serialize)]
pub struct DetectResult {
    /// "cpu" or the adapter's description.
    pub device: String,
    pub width: u32,
    pub height: u32,
    /// CPU threads (for the GPU path: the host threads, which only group rectangles).
    pub threads: usize,
    pub reps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub fps: f64,
    pub faces: usize,
    /// GPU only: passes recorded per frame and the host's milliseconds to record and submit
    /// them (median), a floor under the frame time however fast the GPU is.
    pub gpu_passes_per_frame: Option<usize>,
    pub host_ms: Option<f64>,
    /// GPU only: frames per second of a stream of `reps` such frames with one in flight
    /// (frame N + 1 queued before frame N's faces are read), which hides the host's share.
    pub stream_fps: Option<f64>,
}

/// The frame sizes of the detection benchmark.
pub const DETECT_SIZES: [(u32, u32); 3] = [(640, 480), (1280, 720), (1920, 1080)];

/// A deterministic test frame: `scene` scaled to fit w x h (bilinear) and centred on grey 128,
/// as tools/opencv_bench.py builds its frames.
pub fn detect_frame(scene: &image::GrayImage, w: u32, h: u32) -> image::GrayImage {
    let s = (w as f64 / scene.width() as f64).min(h as f64 / scene.height() as f64);
    let (sw, sh) = (((scene.width() as f64 * s).round() as u32).min(w), ((scene.height() as f64 * s).round() as u32).min(h));
    let scaled = crate::detect::cpu::resize_exact(scene, sw, sh);
    let mut frame = image::GrayImage::from_pixel(w, h, image::Luma([128]));
    image::imageops::replace(&mut frame, &scaled, ((w - sw) / 2) as i64, ((h - sh) / 2) as i64);
    frame
}

/// Stages [`bench_detect_gpu`] and [`bench_detect_cpu`] each add to a progress bar.
pub const DETECT_GPU_STAGES: usize = 2 * DETECT_SIZES.len();
pub const DETECT_CPU_STAGES: usize = DETECT_SIZES.len();

/// Detection (OpenCV's defaults) at each frame size: `detect` returns a frame's face count and,
/// on the GPU, its host cost; median of `reps` runs after a warm-up.
fn bench_detect(
    device: &str,
    threads: usize,
    scene: &image::GrayImage,
    reps: usize,
    bar: &ProgressBar,
    mut detect: impl FnMut(&image::GrayImage) -> Result<(usize, Option<crate::gpu::HostTiming>)>,
) -> Result<Vec<DetectResult>> {
    DETECT_SIZES
        .iter()
        .map(|&(w, h)| {
            bar.set_message(format!("{w}x{h} on {}", if device == "cpu" { format!("the CPU, {threads} thread(s)") } else { device.to_string() }));
            let frame = detect_frame(scene, w, h);
            let (faces, _) = detect(&frame)?;
            let mut samples = Vec::new();
            let mut host = Vec::new();
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                let (_, timing) = detect(&frame)?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                host.extend(timing);
            }
            let min_ms = samples.iter().copied().fold(f64::INFINITY, f64::min);
            let (median_ms, _) = summarize(samples);
            let gpu_passes_per_frame = host.first().map(|t| t.passes);
            let host_ms = (!host.is_empty()).then(|| summarize(host.iter().map(|t| (t.record_ns + t.submit_ns) / 1e6).collect()).0);
            bar.inc(1);
            Ok(DetectResult { device: device.to_string(), width: w, height: h, threads, reps: reps.max(1), median_ms, min_ms, fps: 1e3 / median_ms, faces, gpu_passes_per_frame, host_ms, stream_fps: None })
        })
        .collect()
}

/// The CPU reference detector with `threads` rayon threads.
pub fn bench_detect_cpu(cascade: &crate::detect::Cascade, scene: &image::GrayImage, threads: usize, reps: usize, bar: &ProgressBar) -> Result<Vec<DetectResult>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| crate::error::Error::Gpu { op: "thread pool".into(), detail: e.to_string() })?;
    let params = crate::detect::DetectParams::default();
    bench_detect("cpu", threads, scene, reps, bar, |frame| Ok((pool.install(|| crate::detect::detect_multi_scale(cascade, frame, &params)).len(), None)))
}

/// The GPU detector; each frame is uploaded, scanned and read back, then the same frames as a
/// stream with one in flight.
pub fn bench_detect_gpu(gpu: &Gpu, cascade: &crate::detect::Cascade, scene: &image::GrayImage, reps: usize, bar: &ProgressBar) -> Result<Vec<DetectResult>> {
    let detector = crate::detect::gpu::GpuDetector::new(gpu, cascade)?;
    let params = crate::detect::DetectParams::default();
    let mut results = bench_detect(&gpu.describe(), rayon::current_num_threads(), scene, reps, bar, |frame| {
        let faces = detector.detect_multi_scale(frame, &params)?.len();
        Ok((faces, Some(detector.last_host_timing())))
    })?;
    for r in &mut results {
        bar.set_message(format!("{}x{} on {}, as a stream", r.width, r.height, r.device));
        let frame = detect_frame(scene, r.width, r.height);
        let start = Instant::now();
        detector.detect_stream(vec![&frame; r.reps], &params, |_, _| {})?;
        r.stream_fps = Some(r.reps as f64 / start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    Ok(results)
}

/// Batch-1 latency is the median of this many calls per repetition: a call takes about a
/// millisecond, and on a shared host the median of ten moved by half from run to run.
/// tools/torch_bench.py does the same.
pub const BATCH1_REPS_PER_REP: usize = 20;

/// Training and inference throughput of a model on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    pub model: String,
    pub parameters: usize,
    pub device: String,
    /// Host threads (rayon's pool): the CPU backend's compute threads.
    pub threads: usize,
    pub batch: usize,
    pub reps: usize,
    /// Full step: forward, loss, backward, Adam.
    pub train_images_per_second: f64,
    pub inference_images_per_second: f64,
    pub inference_batch1_ms: f64,
}

/// Stages [`bench_train`] adds to a progress bar: training, inference, batch-1 latency.
pub const TRAIN_STAGES: usize = 3;

/// Times training steps and inference of `config` on `backend` with synthetic images,
/// median of `reps` after a warm-up (batch-1 latency: of [`BATCH1_REPS_PER_REP`] times as many).
pub fn bench_train<B: crate::nn::Backend>(backend: &B, config: crate::nn::ModelConfig, batch: usize, reps: usize, bar: &ProgressBar) -> anyhow::Result<TrainBench> {
    use crate::kernels::adam::AdamConfig;
    let mut model = crate::nn::Model::new(backend, config, 1)?;
    let px = crate::data::PIXELS;
    let images: Vec<u8> = (0..batch * px).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    let maps = vec![crate::kernels::warp::IDENTITY; batch];
    let median_of = |reps: usize, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?;
        let mut samples = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            f()?;
            samples.push(t.elapsed().as_secs_f64());
        }
        Ok(summarize(samples).0)
    };
    let median = |f: &mut dyn FnMut() -> anyhow::Result<()>| median_of(reps.max(1), f);
    let name = model.config.name.clone();
    let stage = |what: &str| bar.set_message(format!("{name}: {what}"));
    let mut step = 0u64;
    stage("training steps");
    // Pipelined as `mien train` runs them: step N + 1 is queued before step N's loss is read.
    let mut in_flight = None;
    let train = median(&mut || {
        step += 1;
        let next = model.submit_train_step(backend, &images, &maps, &labels, step as u32, AdamConfig::default(), step)?;
        if let Some(previous) = in_flight.replace(next) {
            previous.wait(backend)?;
        }
        Ok(())
    })?;
    if let Some(last) = in_flight.take() {
        last.wait(backend)?;
    }
    bar.inc(1);
    stage("inference");
    // Throughput, so pipelined too: batch N + 1 is queued before batch N's outputs are read.
    let mut in_flight = None;
    let infer = median(&mut || {
        let next = model.submit_evaluation(backend, &images, crate::kernels::warp::IDENTITY, &labels)?;
        if let Some(previous) = in_flight.replace(next) {
            previous.wait(backend)?;
        }
        Ok(())
    })?;
    if let Some(last) = in_flight.take() {
        last.wait(backend)?;
    }
    bar.inc(1);
    stage("batch-1 latency");
    let single = median_of(reps.max(1) * BATCH1_REPS_PER_REP, &mut || {
        model.predict(backend, &images[..px], false)?;
        Ok(())
    })?;
    bar.inc(1);
    Ok(TrainBench {
        model: model.config.name.clone(),
        parameters: model.parameter_count(),
        device: backend.describe(),
        threads: rayon::current_num_threads(),
        batch,
        reps: reps.max(1),
        train_images_per_second: batch as f64 / train,
        inference_images_per_second: batch as f64 / infer,
        inference_batch1_ms: single * 1e3,
    })
}
