//! Kernel benchmarks: every op at the original model's shapes for each of a list of batches (1,
//! 64 and 256 by default), on the GPU (timestamp queries where the adapter has them, wall clock
//! otherwise) and on the CPU backend, side by side in one run so the ratio is fair on a shared,
//! noisy machine.

use super::calibration::{Calibration, Peaks, Yardsticks};
use super::{seeded, summarize, time_gpu, GpuRun, KernelReport, KernelResult, Summary, Work};
use crate::error::Result;
use crate::gpu::{Gpu, GpuBuffer};
use crate::kernels::adam::{self, AdamConfig};
use crate::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use crate::kernels::conv2d::{self, Activation, Conv2dShape, Padding};
use crate::kernels::dense::{self, DenseShape};
use crate::kernels::dropout::{self, Mask};
use crate::kernels::maxpool2d::{self, PoolShape};
use crate::kernels::relu;
use crate::kernels::softmax_xent::{self, XentOutputs, XentShape};
use indicatif::ProgressBar;
use std::rc::Rc;
use std::time::Instant;

type CpuRun = Box<dyn FnMut() -> Result<()>>;

struct Case {
    name: String,
    shape: String,
    work: Work,
    gpu: GpuRun,
    cpu: CpuRun,
}

/// Milliseconds, after one warm-up run.
fn time_cpu(run: &mut CpuRun, reps: usize) -> Result<Summary> {
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

/// A convolution's or a dense layer's operands on the GPU, shared by its forward and backward
/// cases.
struct LayerBufs {
    x: GpuBuffer<f32>,
    w: GpuBuffer<f32>,
    b: GpuBuffer<f32>,
    dy: GpuBuffer<f32>,
    y: GpuBuffer<f32>,
    dx: GpuBuffer<f32>,
    dw: GpuBuffer<f32>,
    db: GpuBuffer<f32>,
}

impl LayerBufs {
    fn new(gpu: &Gpu, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> Result<LayerBufs> {
        Ok(LayerBufs {
            x: gpu.upload(x)?,
            w: gpu.upload(w)?,
            b: gpu.upload(b)?,
            dy: gpu.upload(dy)?,
            y: gpu.zeros(dy.len())?,
            dx: gpu.zeros(x.len())?,
            dw: gpu.zeros(w.len())?,
            db: gpu.zeros(b.len())?,
        })
    }
}

/// The forward pass and both gradients of one convolution; `data_grad` false leaves out the
/// gradient with respect to the input, which training never computes for the first layer.
fn conv_cases(gpu: &Gpu, name: &str, s: Conv2dShape, data_grad: bool) -> Result<Vec<Case>> {
    let x = seeded(s.input_len(), 1);
    let w: Vec<f32> = seeded(s.weight_len(), 2).iter().map(|v| v * 0.1).collect();
    let b = seeded(s.cout, 3);
    let dy = seeded(s.output_len(), 4);
    let g = Rc::new(LayerBufs::new(gpu, &x, &w, &b, &dy)?);
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
        gpu: Box::new(move |rec| conv2d::forward_gpu(rec, s, &g1.x, &g1.w, &g1.b, Activation::Relu, &g1.y)),
        cpu: Box::new(move || conv2d::forward_cpu(s, &x1, &w1, Some(&b1), Activation::Relu, &mut y)),
    }];
    if data_grad {
        cases.push(Case {
            name: format!("{name} backward data"),
            shape: shape.clone(),
            work,
            gpu: Box::new(move |rec| conv2d::backward_data_gpu(rec, s, &g2.dy, &g2.w, &g2.dx)),
            cpu: Box::new(move || conv2d::backward_data_cpu(s, &dy2, &w2, &mut dx)),
        });
    }
    cases.push(Case {
        name: format!("{name} backward filter"),
        shape,
        work,
        gpu: Box::new(move |rec| conv2d::backward_filter_gpu(rec, s, &g3.x, &g3.dy, &g3.dw, &g3.db)),
        cpu: Box::new(move || conv2d::backward_filter_cpu(s, &x, &dy, &mut dw, &mut db)),
    });
    Ok(cases)
}

fn dense_cases(gpu: &Gpu, name: &str, s: DenseShape) -> Result<Vec<Case>> {
    let x = seeded(s.batch * s.inputs, 5);
    let w: Vec<f32> = seeded(s.inputs * s.outputs, 6).iter().map(|v| v * 0.05).collect();
    let b = seeded(s.outputs, 7);
    let dy = seeded(s.batch * s.outputs, 8);
    let g = Rc::new(LayerBufs::new(gpu, &x, &w, &b, &dy)?);
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
            gpu: Box::new(move |rec| dense::forward_gpu(rec, s, &g1.x, &g1.w, &g1.b, &g1.y)),
            cpu: Box::new(move || dense::forward_cpu(s, &x1, &w1, &b, &mut y)),
        },
        Case {
            name: format!("{name} backward data"),
            shape: shape.clone(),
            work,
            gpu: Box::new(move |rec| dense::backward_data_gpu(rec, s, &g2.dy, &g2.w, &g2.dx)),
            cpu: Box::new(move || dense::backward_data_cpu(s, &dy2, &w, &mut dx)),
        },
        Case {
            name: format!("{name} backward weights"),
            shape,
            work,
            gpu: Box::new(move |rec| dense::backward_weights_gpu(rec, s, &g3.x, &g3.dy, &g3.dw, &g3.db)),
            cpu: Box::new(move || dense::backward_weights_cpu(s, &x, &dy, &mut dw, &mut db)),
        },
    ])
}

/// A product's extents: m x k times k x n.
#[derive(Clone, Copy)]
struct ProductShape {
    m: usize,
    n: usize,
    k: usize,
}

/// The calibration SGEMM at another product's shape (rounded up to what it takes: m and n to
/// multiples of 8, k of 4): what a plain product reaches at a layer's shape, beside that
/// layer's kernels, when the shape and not the kernel limits them.
fn sgemm_case(gpu: &Gpu, layer: &str, product: ProductShape) -> Result<Case> {
    let (m, n, k) = (product.m.next_multiple_of(8), product.n.next_multiple_of(8), product.k.next_multiple_of(4));
    let (a, b) = (seeded(m * k, 11), seeded(k * n, 12));
    let (ga, gb, gc) = (gpu.upload(&a)?, gpu.upload(&b)?, gpu.zeros(m * n)?);
    let mut c = vec![0.0; m * n];
    Ok(Case {
        name: format!("plain SGEMM, {layer}'s shape"),
        shape: format!("{m}x{k} x {k}x{n}"),
        work: Work::Flops(2.0 * (m * n * k) as f64),
        gpu: Box::new(move |rec| crate::kernels::calibration::sgemm_gpu(rec, (m, n, k), &ga, &gb, &gc)),
        cpu: Box::new(move || {
            crate::kernels::sgemm(m, n, k, crate::kernels::MatRef::rows(&a, k), crate::kernels::MatRef::rows(&b, n), &mut c, false, rayon::current_num_threads());
            Ok(())
        }),
    })
}

struct PoolBufs {
    x: GpuBuffer<f32>,
    y: GpuBuffer<f32>,
    argmax: GpuBuffer<u32>,
    dy: GpuBuffer<f32>,
    dx: GpuBuffer<f32>,
}

fn pool_cases(gpu: &Gpu, name: &str, s: PoolShape) -> Result<Vec<Case>> {
    let x = seeded(s.input_len(), 9);
    let dy = seeded(s.output_len(), 10);
    let g = Rc::new(PoolBufs { x: gpu.upload(&x)?, y: gpu.zeros(s.output_len())?, argmax: gpu.zeros(s.output_len())?, dy: gpu.upload(&dy)?, dx: gpu.zeros(s.input_len())? });
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
            gpu: Box::new(move |rec| maxpool2d::forward_gpu(rec, s, &g.x, &g.y, &g.argmax)),
            cpu: Box::new(move || maxpool2d::forward_cpu(s, &x, &mut y, &mut arg)),
        },
        Case {
            name: format!("{name} backward"),
            shape,
            work: bwd,
            gpu: Box::new(move |rec| maxpool2d::backward_gpu(rec, s, &g2.dy, &g2.argmax, None, &g2.dx)),
            cpu: Box::new(move || maxpool2d::backward_cpu(s, &dy, &arg2, None, &mut dx)),
        },
    ])
}

/// Relu's and dropout's operands; each case writes `out`, which none reads.
struct ElementwiseBufs {
    x: GpuBuffer<f32>,
    dy: GpuBuffer<f32>,
    out: GpuBuffer<f32>,
}

fn elementwise_cases(gpu: &Gpu, n: usize) -> Result<Vec<Case>> {
    let x = seeded(n, 11);
    let dy = seeded(n, 12);
    let g = Rc::new(ElementwiseBufs { x: gpu.upload(&x)?, dy: gpu.upload(&dy)?, out: gpu.zeros(n)? });
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
            gpu: Box::new(move |rec| relu::forward_gpu(rec, &g1.x, &g1.out)),
            cpu: Box::new(move || relu::forward_cpu(&x1, &mut y1)),
        },
        Case {
            name: "relu backward".into(),
            shape: shape.clone(),
            work: Work::Bytes(12.0 * n as f64),
            gpu: Box::new(move |rec| relu::backward_gpu(rec, &g2.x, &g2.dy, &g2.out)),
            cpu: Box::new(move || relu::backward_cpu(&x2, &dy, &mut y2)),
        },
        Case {
            name: "dropout 0.25".into(),
            shape,
            work: Work::Bytes(8.0 * n as f64),
            gpu: Box::new(move |rec| dropout::apply_gpu(rec, mask, &g3.x, &g3.out)),
            cpu: Box::new(move || dropout::apply_cpu(mask, &x3, &mut y3)),
        },
    ])
}

fn xent_adam_bn_cases(gpu: &Gpu, batch: usize) -> Result<Vec<Case>> {
    let mut cases = Vec::new();

    let s = XentShape::plain(batch, 7);
    let logits = seeded(batch * 7, 13);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    let (weights, soft) = (vec![1.0f32; 7], vec![0.0f32; batch * 7]);
    struct XentBufs {
        logits: GpuBuffer<f32>,
        labels: GpuBuffer<u32>,
        soft: GpuBuffer<f32>,
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
        soft: gpu.upload(&soft)?,
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
            softmax_xent::forward_gpu(rec, s, &b.logits, &b.labels, &b.soft, &b.weights, out)?;
            softmax_xent::backward_gpu(rec, s, &b.probs, &b.labels, &b.soft, &b.weights, &b.grad)
        }),
        cpu: Box::new(move || {
            softmax_xent::forward_cpu(s, &logits, &labels, &soft, &weights, &mut probs)?;
            softmax_xent::backward_cpu(s, &probs, &labels, &soft, &weights, &mut grad)
        }),
    });

    let n = 2_345_607; // the original model's parameters
    let cfg = AdamConfig::default();
    let grad = seeded(n, 14);
    struct AdamBufs {
        params: GpuBuffer<f32>,
        grad: GpuBuffer<f32>,
        m: GpuBuffer<f32>,
        v: GpuBuffer<f32>,
    }
    let gb = AdamBufs { params: gpu.upload(&seeded(n, 15))?, grad: gpu.upload(&grad)?, m: gpu.zeros(n)?, v: gpu.zeros(n)? };
    let (mut p, mut m, mut v) = (seeded(n, 15), vec![0.0; n], vec![0.0; n]);
    cases.push(Case {
        name: "adam".into(),
        shape: format!("{n} parameters"),
        work: Work::Bytes(4.0 * 7.0 * n as f64),
        gpu: Box::new(move |rec| adam::step_gpu(rec, cfg, 10, &gb.params, &gb.grad, &gb.m, &gb.v)),
        cpu: Box::new(move || adam::step_cpu(cfg, 10, &mut p, &grad, &mut m, &mut v)),
    });

    let s = BnShape { batch, channels: 64, plane: 44 * 44 };
    let bn = BnConfig::default();
    let x = seeded(s.len(), 16);
    let dy = seeded(s.len(), 17);
    let ones = vec![1.0f32; 64];
    let zeros = vec![0.0f32; 64];
    /// The forward case's y is the backward case's dx: one buffer the size of x fewer.
    struct BnBufs {
        x: GpuBuffer<f32>,
        dy: GpuBuffer<f32>,
        gamma: GpuBuffer<f32>,
        beta: GpuBuffer<f32>,
        running_mean: GpuBuffer<f32>,
        running_var: GpuBuffer<f32>,
        mean: GpuBuffer<f32>,
        invstd: GpuBuffer<f32>,
        dgamma: GpuBuffer<f32>,
        dbeta: GpuBuffer<f32>,
        out: GpuBuffer<f32>,
    }
    let c = || gpu.upload(&ones);
    let bufs = Rc::new(BnBufs {
        x: gpu.upload(&x)?,
        dy: gpu.upload(&dy)?,
        gamma: c()?,
        beta: c()?,
        running_mean: c()?,
        running_var: c()?,
        mean: c()?,
        invstd: c()?,
        dgamma: c()?,
        dbeta: c()?,
        out: gpu.zeros(s.len())?,
    });
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
            let p = BnParams { gamma: &bufs.gamma, beta: &bufs.beta, running_mean: &bufs.running_mean, running_var: &bufs.running_var };
            batchnorm::forward_gpu(rec, s, bn, true, Activation::Identity, &bufs.x, p, BnSaved { mean: &bufs.mean, invstd: &bufs.invstd }, &bufs.out)
        }),
        cpu: Box::new(move || batchnorm::forward_train_cpu(s, bn, &x, &gamma, &beta, &mut rm, &mut rv, &mut mean, &mut invstd, &mut y)),
    });
    cases.push(Case {
        name: "batchnorm backward".into(),
        shape,
        work: Work::Bytes(4.0 * 5.0 * s.len() as f64),
        gpu: Box::new(move |rec| batchnorm::backward_gpu(rec, s, &b2.x, &b2.dy, &b2.gamma, BnSaved { mean: &b2.mean, invstd: &b2.invstd }, &b2.out, &b2.dgamma, &b2.dbeta)),
        cpu: Box::new(move || batchnorm::backward_cpu(s, &x2, &dy, &gamma2, BnSaved { mean: &mean2, invstd: &invstd2 }, &mut dx, &mut dg, &mut dbeta)),
    });
    Ok(cases)
}

/// Every kernel at the original model's shapes for `batch` images.
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
    all.push(sgemm_case(gpu, "conv1", ProductShape { m: 32, n: batch * 46 * 46, k: 9 })?);
    all.push(sgemm_case(gpu, "dense2", ProductShape { m: batch, n: 7, k: 1024 })?);
    all.extend(elementwise_cases(gpu, batch * 64 * 44 * 44)?);
    all.extend(xent_adam_bn_cases(gpu, batch)?);
    Ok(all)
}

/// The batches `mien bench kernels` and `cargo bench` time by default: latency, the original
/// model's training batch, and a larger one where a fast GPU's launch overhead matters less.
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
    let peaks = calibration.peaks(gpu, reps)?;
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
            let Yardsticks { yardstick, fma_yardstick } = calibration.for_work(gpu, case.work, reps)?;
            let on_gpu = time_gpu(gpu, &case.gpu, reps)?;
            let on_cpu = time_cpu(&mut case.cpu, reps)?;
            let gpu_ms = on_gpu.ms.median;
            let (Work::Flops(amount) | Work::Bytes(amount)) = case.work;
            let percent_of = |rate: f64| 100.0 * (amount / (gpu_ms / 1e3) / 1e9 / rate);
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
                gpu_spread_ms: on_gpu.ms.spread,
                gpu_percent_of_fma: fma_yardstick.map(percent_of),
                gpu_percent_of_sgemm: of_sgemm,
                gpu_percent_of_copy: of_copy,
                cpu_ms: on_cpu.median,
                cpu_spread_ms: on_cpu.spread,
                gpu_speedup: on_cpu.median / gpu_ms,
                gpu_passes: on_gpu.passes,
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
