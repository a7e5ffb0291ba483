//! Every WGSL kernel against its CPU implementation, on odd shapes (not multiples of any
//! workgroup or tile size), on batch 1, and on the original model's layer shapes at batch 64.

mod common;

use common::{assert_close, gpu, randn_like, read, uniform};
use mien::gpu::Gpu;
use mien::kernels::adam::{self, AdamConfig};
use mien::kernels::add;
use mien::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use mien::kernels::conv2d::{self, Activation, Conv2dShape, Padding, Precision};
use mien::kernels::conv2d_grouped::{self, GroupedConvShape, Pads, PointDepthShape};
use mien::kernels::dense::{self, DenseShape};
use mien::kernels::dropout::{self, Mask};
use mien::kernels::maxpool2d::{self, PoolShape};
use mien::kernels::relu;
use mien::kernels::sgd::{self, SgdConfig};
use mien::kernels::sigmoid;
use mien::kernels::softmax_xent::{self, XentOutputs, XentShape};
use mien::kernels::upsample::{self, UpsampleShape};
use mien::kernels::yunet_decode::{self, DecodeShape, RECORD};

/// f32 sums in a different order: GPU tree/tile order vs the CPU's blocked gemm.
const SUM_TOL: f32 = 1e-4;

fn up(g: &Gpu, v: &[f32]) -> mien::gpu::GpuBuffer<f32> {
    g.upload(v).unwrap()
}

/// The original model's convolutions at batch 64:
/// 48x48x1 -> 32 -> 64 -> pool -> 128 -> pool -> 128.
fn original_model_convs() -> Vec<Conv2dShape> {
    [(1, 48, 32), (32, 46, 64), (64, 22, 128), (128, 10, 128)].iter().map(|&(cin, hw, cout)| Conv2dShape::new(64, cin, (hw, hw), cout, (3, 3), Padding::Valid).unwrap()).collect()
}

fn odd_convs() -> Vec<Conv2dShape> {
    vec![
        Conv2dShape::new(1, 1, (48, 48), 32, (3, 3), Padding::Valid).unwrap(),
        Conv2dShape::new(3, 5, (13, 11), 7, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(2, 3, (9, 10), 67, (5, 5), Padding::Same).unwrap(),
        Conv2dShape::new(2, 2, (7, 7), 3, (2, 2), Padding::Same).unwrap(),
        Conv2dShape::new(2, 3, (8, 9), 5, (1, 1), Padding::Valid).unwrap(),
        Conv2dShape::new(1, 4, (6, 17), 3, (3, 5), Padding::Valid).unwrap(),
        // Kernel rows past 5 taps: conv2d.wgsl loads the input window's next vec4 mid-row.
        Conv2dShape::new(2, 3, (9, 14), 9, (2, 7), Padding::Valid).unwrap(),
        // Enough output windows that a CPU adapter of up to 8 cores takes the wide tile (16
        // channels a thread) for these and their data gradients; the small shapes above get 8.
        Conv2dShape::new(8, 5, (46, 45), 19, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(8, 3, (41, 38), 21, (5, 5), Padding::Same).unwrap(),
        // Planes of 3 windows: the wide tile takes images 8 at a time so that its subgroups
        // fill up (conv2d.rs, wide_groups), and 45 leaves the last group 3 images short.
        Conv2dShape::new(45, 6, (8, 8), 120, (3, 3), Padding::Valid).unwrap(),
        // 15 pairs of input channels, the last a channel short: the wide filter gradient rounds
        // them up to a subgroup of 16 threads (8 lanes on lavapipe), one of them idle.
        Conv2dShape::new(3, 29, (9, 10), 11, (3, 3), Padding::Same).unwrap(),
    ]
}

/// Every convolution kernel against the CPU, with the adapter's own tiles and with the tiles
/// meant for real GPUs (on lavapipe the two differ: 16 output channels a thread against 8).
fn check_conv(s: Conv2dShape, seed: u64) {
    check_conv_on(gpu(), s, seed);
    check_conv_on(common::gpu_with_gpu_tiles(), s, seed);
}

fn check_conv_on(g: &mien::gpu::Gpu, s: Conv2dShape, seed: u64) {
    let x = randn_like(s.input_len(), seed);
    let w = uniform(s.weight_len(), seed + 1, -0.3, 0.3);
    let b = randn_like(s.cout, seed + 2);
    let dy = randn_like(s.output_len(), seed + 3);

    let mut y = vec![0.0; s.output_len()];
    conv2d::forward_cpu(s, &x, &w, Some(&b), Activation::Identity, &mut y).unwrap();
    let mut y_relu = vec![0.0; s.output_len()];
    conv2d::forward_cpu(s, &x, &w, Some(&b), Activation::Relu, &mut y_relu).unwrap();
    assert!(y_relu.iter().zip(&y).all(|(&r, &v)| r == v.max(0.0)), "fused ReLU {s:?}");
    let mut dx = vec![0.0; s.input_len()];
    conv2d::backward_data_cpu(s, &dy, &w, &mut dx).unwrap();
    let (mut dw, mut db) = (vec![0.0; s.weight_len()], vec![0.0; s.cout]);
    conv2d::backward_filter_cpu(s, &x, &dy, &mut dw, &mut db).unwrap();

    let (xg, wg, bg, dyg) = (up(g, &x), up(g, &w), up(g, &b), up(g, &dy));
    let (yg, yg_relu) = (g.zeros(s.output_len()).unwrap(), g.zeros(s.output_len()).unwrap());
    let dxg = g.zeros(s.input_len()).unwrap();
    let (dwg, dbg) = (g.zeros(s.weight_len()).unwrap(), g.zeros(s.cout).unwrap());
    g.run(|rec| {
        conv2d::forward_gpu(rec, s, &xg, &wg, &bg, Activation::Identity, &yg)?;
        conv2d::forward_gpu(rec, s, &xg, &wg, &bg, Activation::Relu, &yg_relu)?;
        conv2d::backward_data_gpu(rec, s, &dyg, &wg, &dxg)?;
        conv2d::backward_filter_gpu(rec, s, &xg, &dyg, &dwg, &dbg)
    })
    .unwrap();
    assert_close(&format!("conv forward {s:?}"), &g.read(&yg).unwrap(), &y, SUM_TOL);
    assert_close(&format!("conv forward with ReLU {s:?}"), &g.read(&yg_relu).unwrap(), &y_relu, SUM_TOL);
    assert_close(&format!("conv backward data {s:?}"), &g.read(&dxg).unwrap(), &dx, SUM_TOL);
    assert_close(&format!("conv backward filter {s:?}"), &g.read(&dwg).unwrap(), &dw, SUM_TOL);
    assert_close(&format!("conv bias gradient {s:?}"), &g.read(&dbg).unwrap(), &db, SUM_TOL);
}

#[test]
fn conv2d_odd_shapes() {
    for (i, s) in odd_convs().into_iter().enumerate() {
        check_conv(s, 10 * i as u64);
    }
}

/// Scratch buffers (padded inputs, packed weights, partial sums) start as NaN in test builds and
/// come back from the pool with the last call's contents: every call must write all it reads.
#[test]
fn scratch_buffers_reused_across_calls_hold_no_stale_values() {
    let same = Conv2dShape::new(3, 5, (9, 11), 6, (3, 3), Padding::Same).unwrap();
    for seed in [500, 600, 700] {
        check_conv(same, seed);
        check_dense(DenseShape::new(3, 37, 19).unwrap(), seed);
    }
}

#[test]
fn conv2d_original_model_shapes_batch_64() {
    for (i, s) in original_model_convs().into_iter().enumerate() {
        check_conv(s, 100 + i as u64);
    }
}

/// Every dense kernel against the CPU, with the adapter's own tiles and with the GPU ones.
fn check_dense(s: DenseShape, seed: u64) {
    check_dense_on(gpu(), s, seed);
    check_dense_on(common::gpu_with_gpu_tiles(), s, seed);
}

fn check_dense_on(g: &Gpu, s: DenseShape, seed: u64) {
    let x = randn_like(s.batch * s.inputs, seed);
    let w = uniform(s.inputs * s.outputs, seed + 1, -0.1, 0.1);
    let b = randn_like(s.outputs, seed + 2);
    let dy = randn_like(s.batch * s.outputs, seed + 3);
    let mut y = vec![0.0; s.batch * s.outputs];
    dense::forward_cpu(s, &x, &w, &b, &mut y).unwrap();
    let mut dx = vec![0.0; x.len()];
    dense::backward_data_cpu(s, &dy, &w, &mut dx).unwrap();
    let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; s.outputs]);
    dense::backward_weights_cpu(s, &x, &dy, &mut dw, &mut db).unwrap();

    let (xg, wg, bg, dyg) = (up(g, &x), up(g, &w), up(g, &b), up(g, &dy));
    let (yg, dxg, dwg, dbg) = (g.zeros(y.len()).unwrap(), g.zeros(x.len()).unwrap(), g.zeros(w.len()).unwrap(), g.zeros(s.outputs).unwrap());
    g.run(|rec| {
        dense::forward_gpu(rec, s, &xg, &wg, &bg, &yg)?;
        dense::backward_data_gpu(rec, s, &dyg, &wg, &dxg)?;
        dense::backward_weights_gpu(rec, s, &xg, &dyg, &dwg, &dbg)
    })
    .unwrap();
    assert_close(&format!("dense forward {s:?}"), &g.read(&yg).unwrap(), &y, SUM_TOL);
    assert_close(&format!("dense backward data {s:?}"), &g.read(&dxg).unwrap(), &dx, SUM_TOL);
    assert_close(&format!("dense backward weights {s:?}"), &g.read(&dwg).unwrap(), &dw, SUM_TOL);
    assert_close(&format!("dense bias gradient {s:?}"), &g.read(&dbg).unwrap(), &db, SUM_TOL);
}

#[test]
fn dense_odd_shapes_and_original_model() {
    // (5, 40, 12) and (70, 36, 20) take the vec4 transpose into the k-major layout
    // (dense_transpose.wgsl) with ragged edges; the odd ones the element-wise packing
    // (dense_pack.wgsl). Up to 4 rows take the matrix-vector pipeline (dense.wgsl's
    // SMALL_M), 512 columns a workgroup: (4, 64, 1100) spans three, the last ragged.
    let shapes = [(1, 37, 19), (5, 37, 19), (3, 1000, 7), (513, 3, 2), (5, 40, 12), (70, 36, 20), (64, 2048, 1024), (64, 1024, 7), (1, 2048, 1024), (4, 64, 1100)];
    for (i, &(b, n_in, n_out)) in shapes.iter().enumerate() {
        check_dense(DenseShape::new(b, n_in, n_out).unwrap(), 7 * i as u64);
    }
}

#[test]
fn maxpool_odd_and_original_model_shapes() {
    let g = gpu();
    // Rows a multiple of 4 long with 2x2 windows take maxpool2d_pairs.wgsl; (9, 12) has an odd
    // row left over below the last window.
    let shapes = [(1, 3, (7, 9), 2), (2, 5, (5, 5), 3), (3, 4, (6, 11), 2), (2, 3, (9, 12), 2), (64, 64, (44, 44), 2), (64, 128, (20, 20), 2), (64, 128, (8, 8), 2)];
    for (i, &(batch, c, hw, size)) in shapes.iter().enumerate() {
        let s = PoolShape::new(batch, c, hw, size).unwrap();
        // Coarse values tie often, as ReLU's zeros do: every path must pick the first maximum.
        let x: Vec<f32> = randn_like(s.input_len(), i as u64).iter().map(|v| (v * 2.0).round()).collect();
        let dy = randn_like(s.output_len(), 50 + i as u64);
        let (mut y, mut arg, mut dx) = (vec![0.0; s.output_len()], vec![0u32; s.output_len()], vec![0.0; s.input_len()]);
        maxpool2d::forward_cpu(s, &x, &mut y, &mut arg).unwrap();
        maxpool2d::backward_cpu(s, &dy, &arg, None, &mut dx).unwrap();
        // Through a ReLU before the pooling as well: the same as ReLU's own backward pass on
        // the pooling's input gradient.
        let (mut dx_relu, mut expected) = (vec![0.0; s.input_len()], vec![0.0; s.input_len()]);
        maxpool2d::backward_cpu(s, &dy, &arg, Some(&y), &mut dx_relu).unwrap();
        relu::backward_cpu(&x, &dx, &mut expected).unwrap();
        assert_eq!(dx_relu, expected, "maxpool backward through a ReLU {s:?}");
        let (xg, dyg) = (up(g, &x), up(g, &dy));
        let (yg, argg, dxg, dxg_relu) = (g.zeros(y.len()).unwrap(), g.zeros::<u32>(y.len()).unwrap(), g.zeros(x.len()).unwrap(), g.zeros(x.len()).unwrap());
        g.run(|rec| {
            maxpool2d::forward_gpu(rec, s, &xg, &yg, &argg)?;
            maxpool2d::backward_gpu(rec, s, &dyg, &argg, None, &dxg)?;
            maxpool2d::backward_gpu(rec, s, &dyg, &argg, Some(&yg), &dxg_relu)
        })
        .unwrap();
        assert_eq!(read(&yg), y, "maxpool forward {s:?}");
        assert_eq!(g.read(&argg).unwrap(), arg, "maxpool argmax {s:?}");
        assert_eq!(read(&dxg), dx, "maxpool backward {s:?}");
        assert_eq!(read(&dxg_relu), dx_relu, "maxpool backward through a ReLU {s:?}");
    }
}

#[test]
fn relu_and_dropout_match_exactly() {
    let g = gpu();
    for (i, n) in [1usize, 255, 257, 64 * 32 * 46 * 46 + 3].into_iter().enumerate() {
        let x = randn_like(n, i as u64);
        let dy = randn_like(n, 9 + i as u64);
        let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
        relu::forward_cpu(&x, &mut y).unwrap();
        relu::backward_cpu(&x, &dy, &mut dx).unwrap();
        let mask = Mask::new(0.25, 1234 + i as u32).unwrap();
        let (mut dropped, mut dropped_grad) = (vec![0.0; n], vec![0.0; n]);
        dropout::apply_cpu(mask, &x, &mut dropped).unwrap();
        dropout::apply_cpu(mask, &dy, &mut dropped_grad).unwrap();

        let (xg, dyg) = (up(g, &x), up(g, &dy));
        let outs: Vec<_> = (0..4).map(|_| g.zeros::<f32>(n).unwrap()).collect();
        g.run(|rec| {
            relu::forward_gpu(rec, &xg, &outs[0])?;
            relu::backward_gpu(rec, &xg, &dyg, &outs[1])?;
            dropout::apply_gpu(rec, mask, &xg, &outs[2])?;
            dropout::apply_gpu(rec, mask, &dyg, &outs[3])
        })
        .unwrap();
        assert_eq!(read(&outs[0]), y, "relu forward n={n}");
        assert_eq!(read(&outs[1]), dx, "relu backward n={n}");
        assert_eq!(read(&outs[2]), dropped, "dropout forward n={n}: the GPU and CPU masks must agree");
        assert_eq!(read(&outs[3]), dropped_grad, "dropout backward n={n}");
        if n > 10_000 {
            let kept = dropped.iter().zip(&x).filter(|(d, x)| **d != 0.0 || **x == 0.0).count() as f64 / n as f64;
            assert!((kept - 0.75).abs() < 0.01, "dropout kept {kept} of the elements, expected 0.75");
        }
    }
}

#[test]
fn dropout_masks_differ_between_seeds() {
    let a = Mask::new(0.5, 1).unwrap();
    let b = Mask::new(0.5, 2).unwrap();
    let same = (0..10_000u32).filter(|&i| a.keeps(i) == b.keeps(i)).count();
    assert!((4_500..5_500).contains(&same), "masks of two seeds agree on {same} of 10000 elements");
}

#[test]
fn softmax_cross_entropy_forward_backward() {
    let g = gpu();
    // With a teacher too (distill > 0): its weight alone, with smoothing, and the teacher alone.
    let cases = [(1usize, 7usize, 0.0, 0.0), (64, 7, 0.1, 0.0), (131, 3, 0.2, 0.0), (5, 1, 0.0, 0.0), (64, 7, 0.0, 0.5), (33, 7, 0.1, 0.3), (17, 3, 0.0, 1.0)];
    for (i, &(batch, classes, smoothing, distill)) in cases.iter().enumerate() {
        let s = XentShape { batch, classes, smoothing, distill };
        let logits: Vec<f32> = uniform(batch * classes, i as u64, -8.0, 8.0);
        let labels: Vec<u32> = uniform(batch, 40 + i as u64, 0.0, classes as f32).iter().map(|&v| v as u32).collect();
        let weights = uniform(classes, 80 + i as u64, 0.5, 2.0);
        let mut soft = uniform(batch * classes, 120 + i as u64, 0.01, 1.0);
        for row in soft.chunks_mut(classes) {
            let total: f32 = row.iter().sum();
            row.iter_mut().for_each(|q| *q /= total);
        }
        let mut probs = vec![0.0; logits.len()];
        let (loss, correct) = softmax_xent::forward_cpu(s, &logits, &labels, &soft, &weights, &mut probs).unwrap();
        let mut grad = vec![0.0; logits.len()];
        softmax_xent::backward_cpu(s, &probs, &labels, &soft, &weights, &mut grad).unwrap();

        // The oracle, in f64 from the definition: the target t, -sum t log p, and w (p - t) / batch.
        let (mut want_loss, mut want_grad) = (0.0f64, vec![0.0f32; logits.len()]);
        for r in 0..batch {
            let row = &logits[r * classes..][..classes];
            let top = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let total: f64 = row.iter().map(|&v| (v as f64 - top).exp()).sum();
            let w = weights[labels[r] as usize] as f64;
            for c in 0..classes {
                let onehot = if c == labels[r] as usize { 1.0 } else { 0.0 };
                let t = (1.0 - distill as f64) * ((1.0 - smoothing as f64) * onehot + smoothing as f64 / classes as f64) + distill as f64 * soft[r * classes + c] as f64;
                let log_p = row[c] as f64 - top - total.ln();
                want_loss -= w * t * log_p / batch as f64;
                want_grad[r * classes + c] = (w * (log_p.exp() - t) / batch as f64) as f32;
            }
        }
        assert_close("loss against the oracle", &[loss], &[want_loss as f32], 1e-5);
        assert_close("logit gradient against the oracle", &grad, &want_grad, 1e-5);

        let (lg, labg, sg, wg) = (up(g, &logits), g.upload(&labels).unwrap(), up(g, &soft), up(g, &weights));
        let (pg, rowg, lossg, gradg) = (g.zeros(probs.len()).unwrap(), g.zeros(batch).unwrap(), g.zeros(1).unwrap(), g.zeros(probs.len()).unwrap());
        let correctg = g.zeros::<u32>(1).unwrap();
        g.run(|rec| {
            let out = XentOutputs { probs: &pg, row_loss: &rowg, loss: &lossg, correct: &correctg };
            softmax_xent::forward_gpu(rec, s, &lg, &labg, &sg, &wg, out)?;
            softmax_xent::backward_gpu(rec, s, &pg, &labg, &sg, &wg, &gradg)
        })
        .unwrap();
        // exp and log differ in the last bits between GPU drivers and Rust's libm.
        assert_close("probabilities", &read(&pg), &probs, 1e-5);
        assert_close("loss", &read(&lossg), &[loss], 1e-5);
        assert_eq!(g.read(&correctg).unwrap(), vec![correct]);
        assert_close("logit gradient", &read(&gradg), &grad, 1e-5);
    }
}

#[test]
fn softmax_cross_entropy_rejects_bad_labels() {
    let s = XentShape::plain(2, 7);
    let mut probs = vec![0.0; 14];
    let err = softmax_xent::forward_cpu(s, &[0.0; 14], &[3, 7], &[0.0; 14], &[1.0; 7], &mut probs).unwrap_err();
    assert!(err.to_string().contains("label 7 at row 1"), "{err}");
    // A teacher's weight outside [0, 1], and a teacher's rows of the wrong length.
    let err = softmax_xent::forward_cpu(XentShape { distill: 1.5, ..s }, &[0.0; 14], &[3, 6], &[0.0; 14], &[1.0; 7], &mut probs).unwrap_err();
    assert!(err.to_string().contains("teacher's weight 1.5"), "{err}");
    let err = softmax_xent::forward_cpu(s, &[0.0; 14], &[3, 6], &[0.0; 13], &[1.0; 7], &mut probs).unwrap_err();
    assert!(err.to_string().contains("teacher probabilities"), "{err}");
}

#[test]
fn adam_matches_over_several_steps() {
    let g = gpu();
    let n = 2_345_607; // the original model's parameter count
    let cfg = AdamConfig { lr: 1e-3, ..Default::default() };
    let mut p = randn_like(n, 1);
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let (pg, mg, vg) = (up(g, &p), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    for t in 1..=3u64 {
        let grad = randn_like(n, 10 + t);
        adam::step_cpu(cfg, t, &mut p, &grad, &mut m, &mut v).unwrap();
        let gg = up(g, &grad);
        g.run(|rec| adam::step_gpu(rec, cfg, t, &pg, &gg, &mg, &vg)).unwrap();
    }
    assert_close("adam parameters", &read(&pg), &p, 1e-6);
    assert_close("adam m", &read(&mg), &m, 1e-6);
    assert_close("adam v", &read(&vg), &v, 1e-6);
}

#[test]
fn sgd_matches_over_several_steps() {
    let g = gpu();
    for (n, nesterov) in [(2_345_607, true), (1001, false), (1, true)] {
        let cfg = SgdConfig { lr: 0.01, momentum: 0.9, nesterov, weight_decay: 5e-4 };
        let mut p = randn_like(n, 1);
        // Not carried into the first step, on either side.
        let mut buf = randn_like(n, 2);
        let (pg, bufg) = (up(g, &p), up(g, &buf));
        for t in 1..=3u64 {
            let grad = randn_like(n, 10 + t);
            sgd::step_cpu(cfg, t, &mut p, &grad, &mut buf).unwrap();
            let gg = up(g, &grad);
            g.run(|rec| sgd::step_gpu(rec, cfg, t, &pg, &gg, &bufg)).unwrap();
        }
        assert_close(&format!("sgd parameters, {n}"), &read(&pg), &p, 1e-6);
        assert_close(&format!("sgd momentum, {n}"), &read(&bufg), &buf, 1e-6);
    }
}

#[test]
fn batchnorm_training_inference_and_backward() {
    let g = gpu();
    let cfg = BnConfig::default();
    for (i, s) in [BnShape { batch: 3, channels: 5, plane: 7 * 9 }, BnShape { batch: 64, channels: 64, plane: 22 * 22 }, BnShape { batch: 64, channels: 1024, plane: 1 }].into_iter().enumerate() {
        let c = s.channels;
        let x: Vec<f32> = uniform(s.len(), i as u64, -2.0, 3.0);
        let dy = randn_like(s.len(), 20 + i as u64);
        let (gamma, beta) = (uniform(c, 30, 0.5, 1.5), randn_like(c, 31));
        let (mut rm, mut rv) = (randn_like(c, 32), uniform(c, 33, 0.5, 2.0));
        let (rm0, rv0) = (rm.clone(), rv.clone());
        let (mut mean, mut invstd, mut y) = (vec![0.0; c], vec![0.0; c], vec![0.0; s.len()]);
        batchnorm::forward_train_cpu(s, cfg, &x, &gamma, &beta, &mut rm, &mut rv, &mut mean, &mut invstd, &mut y).unwrap();
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; s.len()], vec![0.0; c], vec![0.0; c]);
        batchnorm::backward_cpu(s, &x, &dy, &gamma, BnSaved { mean: &mean, invstd: &invstd }, &mut dx, &mut dgamma, &mut dbeta).unwrap();
        let infer = |act| {
            let mut y_inf = vec![0.0; s.len()];
            batchnorm::forward_infer_cpu(s, cfg, act, &x, BnParams { gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv }, &mut y_inf).unwrap();
            y_inf
        };
        let (y_inf, y_inf_relu) = (infer(Activation::Identity), infer(Activation::Relu));
        let relu_of: Vec<f32> = y_inf.iter().map(|&v| if v <= 0.0 { 0.0 } else { v }).collect();
        assert_eq!(y_inf_relu, relu_of, "the fused ReLU is the ReLU of the batch norm {s:?}");

        let (xg, dyg, gg, bg, rmg, rvg) = (up(g, &x), up(g, &dy), up(g, &gamma), up(g, &beta), up(g, &rm0), up(g, &rv0));
        let z = |n| g.zeros::<f32>(n).unwrap();
        let (meang, invg, yg, dxg, dgg, dbg, yinfg, yinf_relug, scratch_m, scratch_i) = (z(c), z(c), z(s.len()), z(s.len()), z(c), z(c), z(s.len()), z(s.len()), z(c), z(c));
        g.run(|rec| {
            let p = BnParams { gamma: &gg, beta: &bg, running_mean: &rmg, running_var: &rvg };
            batchnorm::forward_gpu(rec, s, cfg, true, Activation::Identity, &xg, p, BnSaved { mean: &meang, invstd: &invg }, &yg)?;
            batchnorm::backward_gpu(rec, s, &xg, &dyg, &gg, BnSaved { mean: &meang, invstd: &invg }, &dxg, &dgg, &dbg)?;
            let p = BnParams { gamma: &gg, beta: &bg, running_mean: &rmg, running_var: &rvg };
            batchnorm::forward_gpu(rec, s, cfg, false, Activation::Identity, &xg, p, BnSaved { mean: &scratch_m, invstd: &scratch_i }, &yinfg)?;
            let p = BnParams { gamma: &gg, beta: &bg, running_mean: &rmg, running_var: &rvg };
            batchnorm::forward_gpu(rec, s, cfg, false, Activation::Relu, &xg, p, BnSaved { mean: &scratch_m, invstd: &scratch_i }, &yinf_relug)
        })
        .unwrap();
        let p = BnParams { gamma: &gg, beta: &bg, running_mean: &rmg, running_var: &rvg };
        let training_with_relu = g.run(|rec| batchnorm::forward_gpu(rec, s, cfg, true, Activation::Relu, &xg, p, BnSaved { mean: &meang, invstd: &invg }, &yg));
        assert!(training_with_relu.is_err(), "a ReLU fused into a training pass is refused");
        assert_close("bn mean", &read(&meang), &mean, SUM_TOL);
        assert_close("bn invstd", &read(&invg), &invstd, SUM_TOL);
        assert_close("bn output", &read(&yg), &y, SUM_TOL);
        assert_close("bn running mean", &read(&rmg), &rm, SUM_TOL);
        assert_close("bn running variance", &read(&rvg), &rv, SUM_TOL);
        assert_close("bn dx", &read(&dxg), &dx, 1e-3);
        assert_close("bn dgamma", &read(&dgg), &dgamma, SUM_TOL);
        assert_close("bn dbeta", &read(&dbg), &dbeta, SUM_TOL);
        assert_close("bn inference output", &read(&yinfg), &y_inf, SUM_TOL);
        assert_close("bn inference output with its ReLU", &read(&yinf_relug), &y_inf_relu, SUM_TOL);
    }
}

#[test]
fn sgemm_calibration_kernel_multiplies() {
    let g = gpu();
    // Square, and rectangular with sides that are not multiples of the 64x64 workgroup tile.
    for (m, n, k) in [(128, 128, 128), (40, 72, 12)] {
        let (a, b) = (randn_like(m * k, 1), randn_like(k * n, 2));
        let (ag, bg, cg) = (up(g, &a), up(g, &b), g.zeros(m * n).unwrap());
        g.run(|rec| mien::kernels::calibration::sgemm_gpu(rec, (m, n, k), &ag, &bg, &cg)).unwrap();
        assert_close("calibration sgemm", &read(&cg), &common::naive_matmul(&a, &b, m, k, n), SUM_TOL);
        assert!(g.run(|rec| mien::kernels::calibration::sgemm_gpu(rec, (m, n + 4, k), &ag, &bg, &cg)).is_err());
    }
}

#[test]
fn fma_calibration_kernel_matches_the_cpu() {
    let g = gpu();
    // Not a multiple of the 256-thread workgroup.
    let (threads, iterations) = (1000, 3);
    let sums = g.zeros(threads).unwrap();
    g.run(|rec| mien::kernels::calibration::fma_gpu(rec, threads, iterations, &sums)).unwrap();
    assert_close("calibration fma", &read(&sums), &mien::kernels::calibration::fma_cpu(threads, iterations), SUM_TOL);
    assert!(g.run(|rec| mien::kernels::calibration::fma_gpu(rec, threads + 2, iterations, &sums)).is_err());
}

#[test]
fn copy_calibration_kernel_copies() {
    let g = gpu();
    let src = randn_like(4 * 1001, 3);
    let (sg, dg) = (up(g, &src), g.zeros(src.len()).unwrap());
    g.run(|rec| mien::kernels::calibration::copy_gpu(rec, src.len(), &sg, &dg)).unwrap();
    assert_eq!(read(&dg), src);
    assert!(g.run(|rec| mien::kernels::calibration::copy_gpu(rec, 10, &sg, &dg)).is_err());
}

/// The grouped convolution on `g` against the CPU, with and without its fused ReLU.
fn check_grouped_conv_on(g: &Gpu, s: GroupedConvShape, seed: u64) {
    let x = randn_like(s.input_len(), seed);
    let w = uniform(s.weight_len(), seed + 1, -0.3, 0.3);
    let b = randn_like(s.cout, seed + 2);
    let (xg, wg, bg) = (up(g, &x), up(g, &w), up(g, &b));
    for act in [Activation::Identity, Activation::Relu] {
        let mut y = vec![0.0; s.output_len()];
        conv2d_grouped::forward_cpu(s, &x, &w, &b, act, &mut y).unwrap();
        let yg = g.zeros(s.output_len()).unwrap();
        g.run(|rec| conv2d_grouped::forward_gpu(rec, s, &xg, &wg, &bg, act, &yg)).unwrap();
        assert_close(&format!("grouped conv {act:?} {s:?}"), &g.read(&yg).unwrap(), &y, SUM_TOL);
    }
}

#[test]
fn conv2d_grouped_odd_shapes_and_yunet_layers() {
    let conv = |batch, cin, hw, cout, k, groups, stride, pads| GroupedConvShape::new(batch, cin, hw, cout, k, groups, stride, pads).unwrap();
    let shapes = [
        // YuNet at 320x320: the stem (3 -> 16, 3x3, stride 2, pad 1), a depthwise 3x3 at 40x40,
        // a pointwise 64 -> 64 at 80x80, and the stride-32 heads' 10x10 planes.
        conv(1, 3, (320, 320), 16, (3, 3), 1, (2, 2), Pads::all(1)),
        conv(1, 64, (40, 40), 64, (3, 3), 64, (1, 1), Pads::all(1)),
        conv(1, 64, (80, 80), 64, (1, 1), 1, (1, 1), Pads::all(0)),
        conv(1, 64, (10, 10), 10, (1, 1), 1, (1, 1), Pads::all(0)),
        conv(1, 10, (10, 10), 10, (3, 3), 10, (1, 1), Pads::all(1)),
        // Odd planes, not multiples of any tile: depthwise, pointwise, and both at stride 2 with
        // padding on two sides only (the last input row and column are never read).
        conv(1, 16, (41, 27), 16, (3, 3), 16, (1, 1), Pads::all(1)),
        conv(1, 16, (41, 27), 24, (1, 1), 1, (1, 1), Pads::all(0)),
        conv(1, 16, (41, 27), 16, (3, 3), 16, (2, 2), Pads { top: 1, left: 0, bottom: 0, right: 1 }),
        conv(2, 5, (41, 27), 19, (3, 3), 1, (2, 2), Pads { top: 0, left: 2, bottom: 1, right: 0 }),
        // The hand-computed examples of tests/cpu_oracle.rs, depthwise and ordinary.
        conv(1, 2, (4, 5), 2, (2, 2), 2, (2, 2), Pads { top: 1, left: 0, bottom: 0, right: 1 }),
        conv(1, 2, (4, 5), 1, (2, 2), 1, (2, 2), Pads { top: 1, left: 0, bottom: 0, right: 1 }),
        // Depthwise with 2 output channels per input channel; groups of 2 and 3 channels; a 1x1
        // at stride 2 (not the pointwise route); batches with output channels not a multiple of
        // the 16 a workgroup takes.
        conv(2, 4, (9, 70), 8, (3, 3), 4, (1, 1), Pads::all(1)),
        conv(3, 6, (13, 11), 9, (3, 3), 3, (2, 1), Pads { top: 2, left: 1, bottom: 0, right: 1 }),
        conv(2, 8, (12, 9), 37, (1, 1), 1, (2, 2), Pads::all(0)),
        conv(3, 6, (7, 9), 33, (5, 3), 3, (1, 2), Pads::all(2)),
        // A depthwise window whose patch overflows the workgroup memory (the grouped kernel
        // takes it), padding wider than the kernel (border outputs are the bias alone), and a
        // kernel larger than the image.
        conv(1, 3, (60, 50), 3, (7, 7), 3, (3, 3), Pads::all(3)),
        conv(2, 3, (5, 6), 4, (2, 2), 1, (1, 1), Pads::all(3)),
        conv(1, 2, (3, 2), 3, (5, 5), 1, (1, 1), Pads::all(2)),
        conv(3, 2, (3, 2), 2, (5, 5), 2, (2, 1), Pads::all(2)),
        conv(1, 2, (1, 1), 3, (5, 5), 1, (3, 3), Pads { top: 4, left: 4, bottom: 0, right: 0 }),
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        check_grouped_conv_on(gpu(), s, 40 * i as u64);
    }
}

/// The pointwise-then-depthwise op (two kernels through a buffer on the GPU, one pass over
/// bands of rows on the CPU): YuNet's 16 -> 64 unit at 640x480's stride 4, and an odd plane
/// in a batch of 3.
#[test]
fn pointwise_then_depthwise_gpu_matches_cpu() {
    let g = gpu();
    for (i, (batch, cin, (h, w), c)) in [(1, 16, (120, 160), 64), (3, 5, (13, 11), 7)].into_iter().enumerate() {
        let pw = GroupedConvShape::new(batch, cin, (h, w), c, (1, 1), 1, (1, 1), Pads::all(0)).unwrap();
        let dw = GroupedConvShape::new(batch, c, (h, w), c, (3, 3), c, (1, 1), Pads::all(1)).unwrap();
        let seed = 50 * i as u64;
        let (x, w1, b1) = (randn_like(pw.input_len(), seed), uniform(pw.weight_len(), seed + 1, -0.3, 0.3), randn_like(c, seed + 2));
        let (w2, b2) = (uniform(dw.weight_len(), seed + 3, -0.3, 0.3), randn_like(c, seed + 4));
        let (xg, w1g, b1g, w2g, b2g) = (up(g, &x), up(g, &w1), up(g, &b1), up(g, &w2), up(g, &b2));
        let (mid, yg) = (g.zeros(pw.output_len()).unwrap(), g.zeros(dw.output_len()).unwrap());
        for act in [Activation::Identity, Activation::Relu] {
            let s = PointDepthShape::new(pw, dw, act).unwrap();
            let mut y = vec![0.0; dw.output_len()];
            conv2d_grouped::pointwise_depthwise_cpu(s, &x, (&w1, &b1), (&w2, &b2), Precision::F32, &mut y).unwrap();
            g.run(|rec| conv2d_grouped::pointwise_depthwise_gpu(rec, s, &xg, (&w1g, &b1g), (&w2g, &b2g), &mid, &yg)).unwrap();
            assert_close(&format!("pointwise then depthwise {act:?} {pw:?}"), &g.read(&yg).unwrap(), &y, SUM_TOL);
        }
    }
}

/// Images whose inputs and outputs are 256 or 512 bytes each, 8 or 16 to a 4 KiB binding:
/// each batch needs several dispatches (both convolution kernels, the depthwise first).
#[test]
fn conv2d_grouped_upsample_add_sigmoid_split_into_chunks() {
    let g = common::small_binding_gpu();
    check_grouped_conv_on(g, GroupedConvShape::new(40, 4, (4, 4), 4, (3, 3), 4, (1, 1), Pads::all(1)).unwrap(), 1);
    check_grouped_conv_on(g, GroupedConvShape::new(40, 2, (8, 8), 4, (3, 3), 1, (2, 2), Pads::all(1)).unwrap(), 2);
    check_upsample_on(g, UpsampleShape::double(10, 4, (4, 4)).unwrap(), 3);
    check_add_sigmoid_on(g, 5000, 4);
}

fn check_upsample_on(g: &Gpu, s: UpsampleShape, seed: u64) {
    let x = randn_like(s.input_len(), seed);
    let mut y = vec![0.0; s.output_len()];
    upsample::forward_cpu(s, &x, &mut y).unwrap();
    let (xg, yg) = (up(g, &x), g.zeros(s.output_len()).unwrap());
    g.run(|rec| upsample::forward_gpu(rec, s, &xg, &yg)).unwrap();
    assert_eq!(g.read(&yg).unwrap(), y, "upsample {s:?}");
}

#[test]
fn upsample_odd_and_yunet_shapes() {
    let shapes = [
        // YuNet at 320x320 and 640x480: the stride-32 map doubled to the stride-16 one.
        UpsampleShape::double(1, 64, (10, 10)).unwrap(),
        UpsampleShape::double(1, 64, (15, 20)).unwrap(),
        UpsampleShape::double(3, 5, (7, 9)).unwrap(),
        // Sizes that are not a doubling, up and down.
        UpsampleShape::new(2, 3, (7, 5), (13, 11)).unwrap(),
        UpsampleShape::new(1, 2, (9, 9), (4, 5)).unwrap(),
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        check_upsample_on(gpu(), s, i as u64);
    }
}

/// Sums must match exactly (one rounding each side); the logistic within 1e-6, since GPU
/// drivers compute exp to a few ulps.
fn check_add_sigmoid_on(g: &Gpu, n: usize, seed: u64) {
    let mut x = uniform(n, seed, -20.0, 20.0);
    // Inputs whose exponential would overflow or underflow f32, and zeros of both signs.
    let extremes = [f32::MAX, f32::MIN, 1e30, -1e30, 100.0, -100.0, 88.8, -88.8, 0.0, -0.0, 1e-30, -1e-30];
    x.iter_mut().zip(extremes).for_each(|(x, e)| *x = e);
    let other = randn_like(n, seed + 1);
    let (mut y, mut sum, mut sum_relu) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    sigmoid::forward_cpu(&x, &mut y).unwrap();
    add::forward_cpu(&x, &other, Activation::Identity, &mut sum).unwrap();
    add::forward_cpu(&x, &other, Activation::Relu, &mut sum_relu).unwrap();
    let (xg, og) = (up(g, &x), up(g, &other));
    let outs: Vec<_> = (0..3).map(|_| g.zeros::<f32>(n).unwrap()).collect();
    g.run(|rec| {
        sigmoid::forward_gpu(rec, &xg, &outs[0])?;
        add::forward_gpu(rec, &xg, &og, Activation::Identity, &outs[1])?;
        add::forward_gpu(rec, &xg, &og, Activation::Relu, &outs[2])
    })
    .unwrap();
    let got = g.read(&outs[0]).unwrap();
    for (i, (&got, &want)) in got.iter().zip(&y).enumerate() {
        assert!((got - want).abs() <= 1e-6, "sigmoid({}): GPU {got}, CPU {want}", x[i]);
    }
    assert_eq!(g.read(&outs[1]).unwrap(), sum, "add n={n}");
    assert_eq!(g.read(&outs[2]).unwrap(), sum_relu, "add with ReLU n={n}");
}

#[test]
fn add_and_sigmoid_odd_and_yunet_sizes() {
    // Not multiples of the 256-thread workgroup; YuNet's stride-16 map (64 x 40 x 40 at
    // 640x640), and a few million elements.
    for (i, n) in [12usize, 255, 257, 64 * 40 * 40, (1 << 22) + 3].into_iter().enumerate() {
        check_add_sigmoid_on(gpu(), n, i as u64);
    }
}

#[test]
fn new_kernels_refuse_mismatched_buffers_before_touching_the_gpu() {
    let g = gpu();
    let s = GroupedConvShape::new(1, 4, (5, 5), 4, (3, 3), 4, (2, 2), Pads::all(1)).unwrap();
    let z = |n| g.zeros::<f32>(n).unwrap();
    let (x, w, b, y) = (z(s.input_len()), z(s.weight_len()), z(s.cout), z(s.output_len()));
    let err = g.run(|rec| conv2d_grouped::forward_gpu(rec, s, &x, &w, &b, Activation::Identity, &x)).unwrap_err();
    assert!(err.to_string().contains("conv2d_grouped: bad shapes: output"), "{err}");
    assert!(g.run(|rec| conv2d_grouped::forward_gpu(rec, s, &x, &b, &b, Activation::Identity, &y)).is_err());
    assert!(g.run(|rec| add::forward_gpu(rec, &x, &w, Activation::Identity, &x)).is_err());
    assert!(g.run(|rec| sigmoid::forward_gpu(rec, &x, &w)).is_err());
    let up2 = UpsampleShape::double(1, 4, (5, 5)).unwrap();
    assert!(g.run(|rec| upsample::forward_gpu(rec, up2, &x, &x)).is_err());
}

/// YuNet's head decoding, one record a candidate cell: what a naive loop expects, in
/// FaceDetectorYN's order.
fn naive_yunet_decode(s: DecodeShape, [cls, obj, bbox, kps]: [&[f32]; 4]) -> Vec<Vec<[f32; RECORD]>> {
    let (cells, stride) = (s.cols * s.rows, s.stride as f32);
    (0..s.images)
        .map(|image| {
            let mut list = Vec::new();
            for row in 0..s.rows {
                for col in 0..s.cols {
                    let i = row * s.cols + col;
                    let t = image * cells + i;
                    let score = (cls[t].clamp(0.0, 1.0) * obj[t].clamp(0.0, 1.0)).sqrt();
                    if score < s.threshold {
                        continue;
                    }
                    let at = |head: &[f32], channels: usize, channel: usize| head[(image * channels + channel) * cells + i];
                    let (c, r) = (col as f32, row as f32);
                    let (w, h) = ((at(bbox, 4, 2) as f64).exp() as f32 * stride, (at(bbox, 4, 3) as f64).exp() as f32 * stride);
                    let mut record = [0.0; RECORD];
                    record[..4].copy_from_slice(&[(c + at(bbox, 4, 0)) * stride - w / 2.0, (r + at(bbox, 4, 1)) * stride - h / 2.0, w, h]);
                    for n in 0..5 {
                        record[4 + 2 * n] = (at(kps, 10, 2 * n) + c) * stride;
                        record[5 + 2 * n] = (at(kps, 10, 2 * n + 1) + r) * stride;
                    }
                    record[14] = score;
                    record[15] = (s.first + i) as f32;
                    list.push(record);
                }
            }
            list
        })
        .collect()
}

/// The CPU's lists are the naive loop's, in order, cut at the capacity; the GPU's counts are
/// the same and each of its records is the naive record of its cell (boxes within 1e-5
/// relative, since GPU drivers compute exp to a few ulps), in whatever order its threads came.
/// Odd grids, batches of 1 and 3, a stride after others (`first`), lists that overflow, scores
/// outside [0, 1] (clamped) and YuNet's stride-8 grid of a 640x480 frame.
#[test]
fn yunet_decode_odd_grids_batches_and_overflowing_lists() {
    let shapes = [(1, (13, 7), 8, 0, 200, 0.5), (3, (11, 5), 16, 1000, 7, 0.3), (2, (80, 60), 8, 0, 2048, 0.9), (1, (1, 1), 32, 5, 1, 0.0), (2, (20, 15), 32, 6000, 3, 0.6)];
    for (k, (images, grid, stride, first, capacity, threshold)) in shapes.into_iter().enumerate() {
        let s = DecodeShape::new(images, grid, stride, first, capacity, threshold).unwrap();
        let cells = images * s.cells();
        let seed = 10 * k as u64;
        let heads = [uniform(cells, seed, -0.1, 1.1), uniform(cells, seed + 1, -0.1, 1.1), uniform(4 * cells, seed + 2, -1.0, 1.0), uniform(10 * cells, seed + 3, -2.0, 2.0)];
        let head_refs = [&heads[0][..], &heads[1], &heads[2], &heads[3]];
        let want = naive_yunet_decode(s, head_refs);
        let (mut counts, mut records) = (vec![0u32; images], vec![0.0; images * capacity * RECORD]);
        yunet_decode::forward_cpu(s, head_refs, &mut counts, &mut records).unwrap();
        let g = gpu();
        let gpu_heads = heads.each_ref().map(|h| up(g, h));
        let (counts_g, records_g) = (g.zeros::<u32>(images).unwrap(), g.zeros::<f32>(records.len()).unwrap());
        g.run(|rec| yunet_decode::forward_gpu(rec, s, gpu_heads.each_ref(), &counts_g, &records_g)).unwrap();
        let (gpu_counts, gpu_records) = (g.read(&counts_g).unwrap(), g.read(&records_g).unwrap());
        for (image, list) in want.iter().enumerate() {
            let what = format!("{s:?}, image {image}");
            assert_eq!(counts[image] as usize, list.len(), "{what}: CPU count");
            assert_eq!(gpu_counts[image] as usize, list.len(), "{what}: GPU count");
            let kept = list.len().min(capacity);
            let own = |all: &[f32]| all[image * capacity * RECORD..][..kept * RECORD].to_vec();
            assert_eq!(own(&records), list[..kept].concat(), "{what}: CPU records");
            for got in own(&gpu_records).chunks_exact(RECORD) {
                let cell = got[15] as usize - first;
                let expected = list.iter().find(|r| r[15] as usize == first + cell).unwrap_or_else(|| panic!("{what}: GPU record of cell {cell}, not a candidate"));
                assert!(got.iter().zip(expected).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "{what}: GPU {got:?} vs {expected:?}");
            }
        }
        assert!(want.iter().any(|l| l.len() > capacity) || k != 1, "case 1 overflows");
    }
}
