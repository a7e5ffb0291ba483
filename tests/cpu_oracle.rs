//! The fast CPU kernels (im2col + packed gemm, rayon) against naive loops with f64 sums, and
//! SGD against PyTorch's update written out.

mod common;

use common::{assert_close, naive_conv, naive_matmul, randn_like, transpose};
use mien::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use mien::kernels::conv2d::{self, Activation, Conv2dShape, KeptWeights, Padding, Precision};
use mien::kernels::conv2d_grouped::{self, GroupedConvShape, Pads, PointDepthShape};
use mien::kernels::dense::{self, DenseShape};
use mien::kernels::maxpool2d::{self, PoolShape};
use mien::kernels::sgd::{self, SgdConfig};
use mien::kernels::upsample::{self, UpsampleShape};
use mien::kernels::winograd::{self, Tiling};
use mien::kernels::{add, sigmoid};
use mien::nn::{Backend, Cpu};

#[test]
fn conv_forward_matches_direct_loops() {
    let shapes = [
        Conv2dShape::new(1, 1, (12, 12), 4, (3, 3), Padding::Valid).unwrap(),
        Conv2dShape::new(3, 5, (13, 11), 7, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(2, 3, (9, 10), 6, (5, 5), Padding::Same).unwrap(),
        Conv2dShape::new(2, 2, (7, 7), 3, (2, 2), Padding::Same).unwrap(),
        Conv2dShape::new(2, 3, (8, 9), 5, (1, 1), Padding::Valid).unwrap(),
        Conv2dShape::new(1, 4, (6, 17), 3, (3, 5), Padding::Valid).unwrap(),
        Conv2dShape::new(5, 2, (2, 3), 2, (5, 5), Padding::Same).unwrap(), // kernel larger than the image
        // Winograd (16 input channels or more, whole images per thread, planes large enough):
        // F(4x4, 3x3) on output sides that cut the last tiles by 1, 2 and 3 columns and rows,
        // one on an image in two uneven blocks of tile rows (its 9,600 kernels transformed in
        // three uneven tasks); F(2x2, 3x3) on a 10x10 plane and on an odd one.
        Conv2dShape::new(3, 16, (23, 21), 5, (3, 3), Padding::Valid).unwrap(),
        Conv2dShape::new(2, 96, (41, 38), 100, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(8, 64, (10, 10), 33, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(2, 17, (9, 10), 9, (3, 3), Padding::Same).unwrap(),
    ];
    let tilings: Vec<_> = shapes[7..].iter().map(winograd::tiling).collect();
    assert_eq!(tilings, [Some(Tiling::F4), Some(Tiling::F4), Some(Tiling::F2), Some(Tiling::F2)]);
    // One thread, and more threads than images: then each image's output pixels are shared
    // out among the threads (unevenly at 7), with partial output rows at the seams.
    for threads in [1, 2, 7] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for (i, s) in shapes.into_iter().enumerate() {
            let x = randn_like(s.input_len(), i as u64);
            let w = randn_like(s.weight_len(), 100 + i as u64);
            let b = randn_like(s.cout, 200 + i as u64);
            let mut y = vec![0.0; s.output_len()];
            pool.install(|| conv2d::forward_cpu(s, &x, &w, Some(&b), Activation::Identity, &mut y)).unwrap();
            let want = naive_conv(&s, &x, &w, &b);
            assert_close(&format!("conv {s:?} on {threads} threads"), &y, &want, 1e-5);
            pool.install(|| conv2d::forward_cpu(s, &x, &w, Some(&b), Activation::Relu, &mut y)).unwrap();
            let want: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
            assert_close(&format!("conv + ReLU {s:?} on {threads} threads"), &y, &want, 1e-5);
        }
    }
}

#[test]
fn winograd_takes_the_model_layers_it_is_faster_on() {
    let conv = |cin, side, cout, padding| Conv2dShape::new(64, cin, (side, side), cout, (3, 3), padding).unwrap();
    // The VGG network's convolutions after the first, and the original's conv2 and conv3:
    // F(4x4, 3x3) on planes of 20 and more, F(2x2, 3x3) on 10x10.
    let (f4, f2) = (Some(Tiling::F4), Some(Tiling::F2));
    for (s, tiling) in [
        (conv(64, 40, 64, Padding::Same), f4),
        (conv(128, 20, 128, Padding::Same), f4),
        (conv(256, 10, 256, Padding::Same), f2),
        (conv(32, 46, 64, Padding::Valid), f4),
        (conv(64, 22, 128, Padding::Valid), f4),
    ] {
        assert_eq!(winograd::tiling(&s), tiling, "{s:?}");
    }
    // One input channel; the original's conv4 (8x8 out: 16 tiles numbered as 32); a 5x5 kernel.
    let five = Conv2dShape::new(64, 64, (20, 20), 64, (5, 5), Padding::Same).unwrap();
    for s in [conv(1, 40, 64, Padding::Same), conv(128, 10, 128, Padding::Valid), five] {
        assert!(!winograd::applies(&s), "{s:?}");
    }
}

/// bf16 products (AMX tiles or AVX-512 BF16): each factor keeps 8 bits, so outputs stay within a small
/// fraction of the layer's largest; shapes the tiles do not take give the f32 result exactly.
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_products_stay_near_the_f32_convolution() {
    if !mien::kernels::bf16::available() {
        eprintln!("no bf16 products on this machine: the bf16 route is not tested here");
        return;
    }
    let conv = |batch, cin, side, cout, kernel, padding| Conv2dShape::new(batch, cin, (side, side), cout, (kernel, kernel), padding).unwrap();
    // VGG's layers after the first at a video's batch of 8, and at batch 1 (rows shared among
    // the threads), the original model's conv2 and conv3 ('valid'), an odd plane of 6 tiles of
    // output channels, a 5x5 kernel; and three the tiles do not take (VGG's first layer, 17
    // input channels, 40 output channels).
    let shapes = [
        conv(8, 64, 40, 64, 3, Padding::Same),
        conv(8, 64, 20, 128, 3, Padding::Same),
        conv(8, 128, 20, 128, 3, Padding::Same),
        conv(8, 128, 10, 256, 3, Padding::Same),
        conv(8, 256, 10, 256, 3, Padding::Same),
        conv(1, 64, 40, 64, 3, Padding::Same),
        conv(1, 256, 10, 256, 3, Padding::Same),
        conv(3, 32, 46, 64, 3, Padding::Valid),
        conv(3, 64, 22, 128, 3, Padding::Valid),
        conv(2, 32, 23, 96, 3, Padding::Same),
        conv(2, 32, 13, 16, 5, Padding::Same),
        conv(8, 1, 40, 64, 3, Padding::Same),
        conv(4, 17, 20, 128, 3, Padding::Same),
        conv(4, 128, 20, 40, 3, Padding::Same),
    ];
    let tiled: Vec<bool> = shapes.iter().map(|s| conv2d::in_bf16(s, Precision::Bf16)).collect();
    assert_eq!(tiled, [true, true, true, true, true, true, true, true, true, true, true, false, false, false]);
    for (i, s) in shapes.into_iter().enumerate() {
        let (x, w, b) = (randn_like(s.input_len(), i as u64), randn_like(s.weight_len(), 50 + i as u64), randn_like(s.cout, 90 + i as u64));
        let mut kept = KeptWeights::default();
        let mut run = |precision| {
            let mut y = vec![0.0; s.output_len()];
            conv2d::forward_cpu_keeping(s, &x, (&w, &mut kept), Some(&b), Activation::Relu, precision, &mut y).unwrap();
            y
        };
        let (exact, tiles, again) = (run(Precision::F32), run(Precision::Bf16), run(Precision::F32));
        assert_eq!(exact, again, "{s:?}: f32 after bf16 with the same kept weights");
        if conv2d::pools_in_bf16(&s, Precision::Bf16) {
            // Pooled in the same pass: the tiles' outputs, max-pooled (the bias and the ReLU
            // commute with the maximum, so exactly).
            let pool = PoolShape::new(s.batch, s.cout, (s.oh, s.ow), 2).unwrap();
            let (mut want, mut argmax, mut pooled) = (vec![0.0; pool.output_len()], vec![0; pool.output_len()], vec![0.0; pool.output_len()]);
            maxpool2d::forward_cpu(pool, &tiles, &mut want, &mut argmax).unwrap();
            conv2d::forward_pooled_cpu(s, &x, (&w, &mut kept), &b, &mut pooled).unwrap();
            assert_eq!(pooled, want, "{s:?}: pooled in the convolution's pass");
        }
        if tiled[i] {
            // Measured: at most 0.18-0.24 % of the largest output, about 0.02 % on average.
            assert_close(&format!("bf16 {s:?}"), &tiles, &exact, 5e-3);
            let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            let mean = tiles.iter().zip(&exact).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / exact.len() as f64;
            assert!(mean < 5e-4 * scale, "bf16 {s:?}: mean difference {mean} against a largest output of {scale}");
        } else {
            assert_eq!(tiles, exact, "{s:?}: not in bf16");
        }
    }
}

#[test]
fn the_cpu_backend_transforms_weights_again_after_every_write() {
    // The backend keeps Winograd's transform of a convolution's weights between calls: a
    // write, or an optimizer step in place, must make the next call use the new weights.
    let backend = Cpu;
    let s = Conv2dShape::new(4, 16, (11, 12), 18, (3, 3), Padding::Same).unwrap();
    assert!(winograd::applies(&s));
    let tensor = |values: &[f32]| {
        let t = backend.tensor(values.len()).unwrap();
        backend.write(&t, values).unwrap();
        t
    };
    let (x, b) = (randn_like(s.input_len(), 1), randn_like(s.cout, 2));
    let (xt, bt, yt) = (tensor(&x), tensor(&b), backend.tensor(s.output_len()).unwrap());
    let w = randn_like(s.weight_len(), 3);
    let wt = tensor(&w);
    let forward = || {
        backend.conv2d_forward(s, &xt, &wt, &bt, Activation::Identity, Precision::F32, &yt).unwrap();
        yt.borrow().clone()
    };
    let direct = |w: &[f32]| {
        let mut y = vec![0.0; s.output_len()];
        conv2d::forward_cpu(s, &x, w, Some(&b), Activation::Identity, &mut y).unwrap();
        y
    };
    assert_close("first call", &forward(), &direct(&w), 1e-6);
    assert_close("second call, transform kept", &forward(), &direct(&w), 1e-6);
    let rewritten = randn_like(s.weight_len(), 4);
    backend.write(&wt, &rewritten).unwrap();
    assert_close("after a write", &forward(), &direct(&rewritten), 1e-6);
    let (grad, momentum) = (tensor(&randn_like(s.weight_len(), 5)), backend.tensor(s.weight_len()).unwrap());
    backend.sgd(SgdConfig { lr: 0.5, momentum: 0.9, nesterov: true, weight_decay: 0.0 }, 1, &wt, &grad, &momentum).unwrap();
    let stepped = wt.borrow().clone();
    assert!(stepped != rewritten);
    assert_close("after an SGD step", &forward(), &direct(&stepped), 1e-6);
}

#[test]
fn conv_backward_data_is_the_adjoint_of_forward() {
    // <conv(x), dy> = <x, conv_backward_data(dy)> for any x, dy: checked with f64 dot products.
    // The last two take Winograd's route (a 'same' and a full convolution of dy) on one or
    // two threads, im2col's on seven.
    let shapes = [
        Conv2dShape::new(2, 3, (9, 8), 4, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(2, 16, (12, 11), 20, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(2, 20, (21, 20), 16, (3, 3), Padding::Valid).unwrap(),
    ];
    assert!(!winograd::applies(&shapes[0].data_grad()) && shapes[1..].iter().all(|s| winograd::applies(&s.data_grad())));
    for threads in [1, 2, 7] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for s in shapes {
            let x = randn_like(s.input_len(), 1);
            let w = randn_like(s.weight_len(), 2);
            let dy = randn_like(s.output_len(), 3);
            let y = naive_conv(&s, &x, &w, &vec![0.0; s.cout]);
            let mut dx = vec![0.0; s.input_len()];
            pool.install(|| conv2d::backward_data_cpu(s, &dy, &w, &mut dx)).unwrap();
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
            let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
            assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{s:?} on {threads} threads: {lhs} vs {rhs}");
        }
    }
}

#[test]
fn dense_products_match_naive_matmul() {
    for (i, &(batch, n_in, n_out)) in [(1, 37, 19), (5, 3, 1), (64, 300, 70)].iter().enumerate() {
        let s = DenseShape::new(batch, n_in, n_out).unwrap();
        let x = randn_like(batch * n_in, i as u64);
        let w = randn_like(n_in * n_out, 10 + i as u64);
        let b = randn_like(n_out, 20 + i as u64);
        let dy = randn_like(batch * n_out, 30 + i as u64);
        let mut y = vec![0.0; batch * n_out];
        dense::forward_cpu(s, &x, &w, &b, &mut y).unwrap();
        let mut want = naive_matmul(&x, &w, batch, n_in, n_out);
        want.iter_mut().enumerate().for_each(|(j, v)| *v += b[j % n_out]);
        assert_close("dense forward", &y, &want, 1e-5);

        let mut dx = vec![0.0; x.len()];
        dense::backward_data_cpu(s, &dy, &w, &mut dx).unwrap();
        assert_close("dense dx", &dx, &naive_matmul(&dy, &transpose(&w, n_in, n_out), batch, n_out, n_in), 1e-5);

        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; n_out]);
        dense::backward_weights_cpu(s, &x, &dy, &mut dw, &mut db).unwrap();
        assert_close("dense dW", &dw, &naive_matmul(&transpose(&x, batch, n_in), &dy, n_in, batch, n_out), 1e-5);
        let want_db: Vec<f32> = (0..n_out).map(|o| (0..batch).map(|r| dy[r * n_out + o]).sum()).collect();
        assert_close("dense db", &db, &want_db, 1e-5);
    }
}

/// Batch norm by the textbook formulas, one element at a time with f64 sums.
#[test]
fn batchnorm_matches_per_element_loops() {
    let cfg = BnConfig::default();
    // NCHW planes, a dense layer's [batch, features] (plane 1), and a batch of one.
    for (i, s) in [BnShape { batch: 3, channels: 5, plane: 7 * 9 }, BnShape { batch: 64, channels: 37, plane: 1 }, BnShape { batch: 1, channels: 4, plane: 11 }].into_iter().enumerate() {
        let (len, n) = (s.len(), (s.batch * s.plane) as f64);
        let at = |c: usize, j: usize| ((j / s.plane) * s.channels + c) * s.plane + j % s.plane;
        let x: Vec<f32> = randn_like(len, 40 + i as u64).iter().map(|v| 3.0 * v + 1.0).collect();
        let dy = randn_like(len, 50 + i as u64);
        let gamma = randn_like(s.channels, 60 + i as u64);
        let beta = randn_like(s.channels, 70 + i as u64);
        let (mut rm, mut rv) = (vec![0.5; s.channels], vec![2.0; s.channels]);
        let (mut mean, mut invstd, mut y) = (vec![0.0; s.channels], vec![0.0; s.channels], vec![0.0; len]);
        batchnorm::forward_train_cpu(s, cfg, &x, &gamma, &beta, &mut rm, &mut rv, &mut mean, &mut invstd, &mut y).unwrap();
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; len], vec![0.0; s.channels], vec![0.0; s.channels]);
        batchnorm::backward_cpu(s, &x, &dy, &gamma, BnSaved { mean: &mean, invstd: &invstd }, &mut dx, &mut dgamma, &mut dbeta).unwrap();
        let mut y_inf = vec![0.0; len];
        batchnorm::forward_infer_cpu(s, cfg, Activation::Identity, &x, BnParams { gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv }, &mut y_inf).unwrap();

        let (mut want_y, mut want_inf, mut want_dx) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
        let (mut want_dgamma, mut want_dbeta, mut want_rm, mut want_rv) = (vec![0.0; s.channels], vec![0.0; s.channels], vec![0.0; s.channels], vec![0.0; s.channels]);
        for c in 0..s.channels {
            let mu = (0..s.batch * s.plane).map(|j| x[at(c, j)] as f64).sum::<f64>() / n;
            let var = (0..s.batch * s.plane).map(|j| (x[at(c, j)] as f64 - mu).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + cfg.epsilon as f64).sqrt();
            want_rm[c] = (cfg.momentum as f64 * 0.5 + (1.0 - cfg.momentum as f64) * mu) as f32;
            want_rv[c] = (cfg.momentum as f64 * 2.0 + (1.0 - cfg.momentum as f64) * var) as f32;
            let inv_running = 1.0 / (want_rv[c] as f64 + cfg.epsilon as f64).sqrt();
            let xhat = |j: usize| (x[at(c, j)] as f64 - mu) * inv;
            let (g, b) = (0..s.batch * s.plane).fold((0.0, 0.0), |(g, b), j| (g + dy[at(c, j)] as f64 * xhat(j), b + dy[at(c, j)] as f64));
            want_dgamma[c] = g as f32;
            want_dbeta[c] = b as f32;
            for j in 0..s.batch * s.plane {
                let k = at(c, j);
                want_y[k] = (gamma[c] as f64 * xhat(j) + beta[c] as f64) as f32;
                want_inf[k] = (gamma[c] as f64 * (x[k] as f64 - want_rm[c] as f64) * inv_running + beta[c] as f64) as f32;
                want_dx[k] = (gamma[c] as f64 * inv / n * (n * dy[k] as f64 - b - xhat(j) * g)) as f32;
            }
        }
        let name = |what: &str| format!("batchnorm {what} {s:?}");
        assert_close(&name("y"), &y, &want_y, 1e-4);
        assert_close(&name("running mean"), &rm, &want_rm, 1e-5);
        assert_close(&name("running variance"), &rv, &want_rv, 1e-5);
        assert_close(&name("inference y"), &y_inf, &want_inf, 1e-4);
        assert_close(&name("dgamma"), &dgamma, &want_dgamma, 1e-4);
        assert_close(&name("dbeta"), &dbeta, &want_dbeta, 1e-4);
        assert_close(&name("dx"), &dx, &want_dx, 1e-4);
    }
}

/// SGD as PyTorch's `_single_tensor_sgd` writes it (no dampening), one element at a time in f64:
/// the momentum buffer starts as the first step's decayed gradient.
#[test]
fn sgd_matches_pytorchs_update_written_out() {
    let n = 1001;
    for (i, (momentum, nesterov, weight_decay)) in [(0.9, true, 5e-4), (0.9, false, 1e-2), (0.5, true, 0.0), (0.0, false, 1e-3)].into_iter().enumerate() {
        let cfg = SgdConfig { lr: 0.05, momentum, nesterov, weight_decay };
        let (i, momentum, weight_decay, lr) = (i as u64, momentum as f64, weight_decay as f64, cfg.lr as f64);
        let mut p = randn_like(n, i);
        // What the buffer holds before the first step must not be carried into it.
        let mut buf = randn_like(n, 100 + i);
        let mut want: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        let mut want_buf = vec![0.0f64; n];
        for t in 1..=4u64 {
            let grad = randn_like(n, 10 * i + t);
            sgd::step_cpu(cfg, t, &mut p, &grad, &mut buf).unwrap();
            for j in 0..n {
                let d_p = grad[j] as f64 + weight_decay * want[j];
                want_buf[j] = if t == 1 { d_p } else { momentum * want_buf[j] + d_p };
                let update = if nesterov { d_p + momentum * want_buf[j] } else { want_buf[j] };
                want[j] -= lr * update;
            }
        }
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        assert_close(&format!("sgd parameters {cfg:?}"), &p, &f32s(&want), 1e-5);
        assert_close(&format!("sgd momentum {cfg:?}"), &buf, &f32s(&want_buf), 1e-5);
    }
}

/// The grouped convolution from the stride-1 oracle: each group's input channels zero-padded
/// by hand, convolved 'valid' by `naive_conv`, and every stride-th output kept.
fn naive_grouped_conv(s: &GroupedConvShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let (cig, cog, p) = (s.cin_per_group(), s.cout_per_group(), s.pads);
    let (ph, pw) = (s.h + p.top + p.bottom, s.w + p.left + p.right);
    let valid = Conv2dShape::new(s.batch, cig, (ph, pw), cog, (s.kh, s.kw), Padding::Valid).unwrap();
    let mut y = vec![0.0; s.output_len()];
    for g in 0..s.groups {
        let mut padded = vec![0.0; valid.input_len()];
        for n in 0..s.batch {
            for ci in 0..cig {
                for iy in 0..s.h {
                    let src = &x[((n * s.cin + g * cig + ci) * s.h + iy) * s.w..][..s.w];
                    padded[((n * cig + ci) * ph + iy + p.top) * pw + p.left..][..s.w].copy_from_slice(src);
                }
            }
        }
        let full = naive_conv(&valid, &padded, &w[g * valid.weight_len()..][..valid.weight_len()], &b[g * cog..][..cog]);
        for n in 0..s.batch {
            for co in 0..cog {
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        y[((n * s.cout + g * cog + co) * s.oh + oy) * s.ow + ox] = full[((n * cog + co) * valid.oh + oy * s.stride.0) * valid.ow + ox * s.stride.1];
                    }
                }
            }
        }
    }
    y
}

#[test]
fn grouped_conv_matches_direct_loops() {
    let conv = |batch, cin, hw, cout, k, groups, stride, pads| GroupedConvShape::new(batch, cin, hw, cout, k, groups, stride, pads).unwrap();
    let shapes = [
        // Depthwise (the direct route), with and without stride, and with 3 outputs per channel.
        // 3x3 at stride 1 with one pixel of padding has a route of its own: rows with 25 and
        // 16 columns between the edges (a whole vector, then one overlapping the one before),
        // 15 (no whole vector), one and two columns, one row.
        conv(1, 16, (41, 27), 16, (3, 3), 16, (1, 1), Pads::all(1)),
        conv(2, 3, (5, 18), 3, (3, 3), 3, (1, 1), Pads::all(1)),
        conv(1, 2, (4, 17), 2, (3, 3), 2, (1, 1), Pads::all(1)),
        conv(1, 2, (6, 1), 2, (3, 3), 2, (1, 1), Pads::all(1)),
        conv(1, 2, (6, 2), 2, (3, 3), 2, (1, 1), Pads::all(1)),
        conv(1, 2, (1, 40), 6, (3, 3), 2, (1, 1), Pads::all(1)),
        conv(2, 5, (12, 9), 5, (3, 3), 5, (2, 2), Pads { top: 1, left: 0, bottom: 0, right: 1 }),
        conv(2, 2, (7, 8), 6, (3, 2), 2, (1, 3), Pads { top: 0, left: 2, bottom: 1, right: 0 }),
        // Ordinary and grouped (im2col + product): stride 2 with padding, pointwise, a 1x1 at
        // stride 2, several output-row blocks per image (56 x 56 over 2,048-pixel blocks).
        conv(1, 3, (41, 27), 16, (3, 3), 1, (2, 2), Pads::all(1)),
        conv(3, 16, (13, 11), 24, (1, 1), 1, (1, 1), Pads::all(0)),
        conv(2, 6, (13, 11), 9, (1, 1), 3, (2, 2), Pads::all(0)),
        conv(1, 12, (56, 56), 8, (3, 3), 4, (1, 1), Pads::all(1)),
        conv(2, 6, (9, 10), 4, (5, 3), 2, (2, 1), Pads { top: 2, left: 1, bottom: 0, right: 1 }),
        // Padding wider than the kernel, a kernel larger than the image, and a 1x1 image under
        // wide top-left padding at stride 3, where only the last kernel row and column reach
        // the image (the others' spans are empty, and would start left of it).
        conv(2, 3, (5, 6), 4, (2, 2), 1, (1, 1), Pads::all(3)),
        conv(5, 2, (2, 3), 2, (5, 5), 1, (1, 1), Pads::all(2)),
        conv(1, 2, (2, 3), 2, (5, 5), 2, (1, 1), Pads::all(2)),
        conv(1, 2, (1, 1), 2, (5, 5), 2, (3, 3), Pads { top: 4, left: 4, bottom: 0, right: 0 }),
        conv(1, 2, (1, 1), 3, (5, 5), 1, (3, 3), Pads { top: 4, left: 4, bottom: 0, right: 0 }),
    ];
    // One thread, and more threads than images: single images are then split into blocks of
    // output rows (unevenly at 7).
    let pools: Vec<_> = [1, 2, 7].into_iter().map(|threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()).collect();
    for (i, s) in shapes.into_iter().enumerate() {
        let (x, w, b) = (randn_like(s.input_len(), i as u64), randn_like(s.weight_len(), 100 + i as u64), randn_like(s.cout, 200 + i as u64));
        let want = naive_grouped_conv(&s, &x, &w, &b);
        let want_relu: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
        for pool in &pools {
            let threads = pool.current_num_threads();
            let mut y = vec![0.0; s.output_len()];
            pool.install(|| conv2d_grouped::forward_cpu(s, &x, &w, &b, Activation::Identity, &mut y)).unwrap();
            assert_close(&format!("grouped conv {s:?} on {threads} threads"), &y, &want, 1e-5);
            pool.install(|| conv2d_grouped::forward_cpu(s, &x, &w, &b, Activation::Relu, &mut y)).unwrap();
            assert_close(&format!("grouped conv with ReLU {s:?} on {threads} threads"), &y, &want_relu, 1e-5);
        }
    }
}

/// The pointwise-then-depthwise op against the two convolutions one after the other: planes
/// cut into one band and into several (64 channels of 170 columns take bands of at most 22
/// rows), odd sizes, a single row and a single column, on 1, 2 and 7 threads.
#[test]
fn pointwise_then_depthwise_matches_the_two_convolutions() {
    let pair = |batch, cin, (h, w), c| {
        let pointwise = GroupedConvShape::new(batch, cin, (h, w), c, (1, 1), 1, (1, 1), Pads::all(0)).unwrap();
        (pointwise, GroupedConvShape::new(batch, c, (h, w), c, (3, 3), c, (1, 1), Pads::all(1)).unwrap())
    };
    let pools: Vec<_> = [1, 2, 7].into_iter().map(|threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()).collect();
    for (i, (pw, dw)) in [pair(1, 16, (41, 27), 24), pair(2, 5, (60, 170), 64), pair(3, 4, (1, 9), 3), pair(1, 3, (7, 1), 2)].into_iter().enumerate() {
        let seed = 10 * i as u64;
        let (x, w1, b1) = (randn_like(pw.input_len(), seed), randn_like(pw.weight_len(), seed + 1), randn_like(pw.cout, seed + 2));
        let (w2, b2) = (randn_like(dw.weight_len(), seed + 3), randn_like(dw.cout, seed + 4));
        let mid = naive_grouped_conv(&pw, &x, &w1, &b1);
        let want = naive_grouped_conv(&dw, &mid, &w2, &b2);
        for act in [Activation::Identity, Activation::Relu] {
            let want: Vec<f32> = want.iter().map(|&v| if act == Activation::Relu { v.max(0.0) } else { v }).collect();
            let s = PointDepthShape::new(pw, dw, act).unwrap();
            for pool in &pools {
                let mut y = vec![f32::NAN; dw.output_len()];
                pool.install(|| conv2d_grouped::pointwise_depthwise_cpu(s, &x, (&w1, &b1), (&w2, &b2), Precision::F32, &mut y)).unwrap();
                assert_close(&format!("{act:?} {pw:?} then {dw:?} on {} threads", pool.current_num_threads()), &y, &want, 1e-4);
            }
        }
    }
    // In bf16, pointwise layers of whole tiles of channels (YuNet's 64 -> 64 at a
    // 720p frame's stride 8 and 32, in bands; 32 -> 48 on odd planes) stay near f32.
    if mien::kernels::bf16::available() {
        for (i, (pw, dw)) in [pair(4, 64, (45, 80), 64), pair(1, 64, (12, 20), 64), pair(2, 32, (17, 23), 48)].into_iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            let (x, w1, b1) = (randn_like(pw.input_len(), seed), randn_like(pw.weight_len(), seed + 1), randn_like(pw.cout, seed + 2));
            let (w2, b2) = (randn_like(dw.weight_len(), seed + 3), randn_like(dw.cout, seed + 4));
            let s = PointDepthShape::new(pw, dw, Activation::Relu).unwrap();
            let run = |precision| {
                let mut y = vec![f32::NAN; dw.output_len()];
                conv2d_grouped::pointwise_depthwise_cpu(s, &x, (&w1, &b1), (&w2, &b2), precision, &mut y).unwrap();
                y
            };
            // Measured: at most 0.21-0.23 % of the largest output, 0.013-0.019 % on average.
            assert_close(&format!("bf16 {pw:?}"), &run(Precision::Bf16), &run(Precision::F32), 5e-3);
        }
    } else {
        eprintln!("no bf16 products on this machine: the bf16 pointwise route is not tested here");
    }
    // Pairs that are not a 1x1 convolution then a 3x3 depthwise one of its output.
    let (pw, dw) = pair(1, 4, (8, 8), 6);
    let strided = GroupedConvShape::new(1, 6, (8, 8), 6, (3, 3), 6, (2, 2), Pads::all(1)).unwrap();
    let other_size = pair(1, 6, (8, 9), 6).1;
    for (first, second) in [(pw, strided), (pw, other_size), (dw, dw)] {
        let err = PointDepthShape::new(first, second, Activation::Identity).unwrap_err().to_string();
        assert!(err.contains("not a 1x1 convolution then a 3x3 depthwise one"), "{err}");
    }
}

/// Stride 2 with padding on the top and right only, worked by hand. Channel 0 of the 4 x 5
/// input is 1..20 row by row, channel 1 its negative; the 2x2 windows start at input rows -1
/// and 1 (the padding row above, then rows 1-2; row 3 is never read, as the output size rounds
/// down) and columns 0, 2 and 4 (the last reaching into the padding column on the right).
#[test]
fn grouped_conv_stride_2_padding_by_hand() {
    let pads = Pads { top: 1, left: 0, bottom: 0, right: 1 };
    let mut x: Vec<f32> = (1..=20).map(|v| v as f32).collect();
    x.extend((1..=20).map(|v| -v as f32));
    let kernels = [1.0, 10.0, 100.0, 1000.0, 0.0, 0.0, 0.0, 1.0];
    // Depthwise: channel 0 takes sums like 100 * 1 + 1000 * 2 = 2100 (first window) and
    // 6 + 10 * 7 + 100 * 11 + 1000 * 12 = 13176 (first of the second row), plus its bias 0.5;
    // channel 1 takes its bottom-right input (-2, -4, then the padding; -12, -14, padding) plus
    // 3, and the ReLU clips it.
    let s = GroupedConvShape::new(1, 2, (4, 5), 2, (2, 2), 2, (2, 2), pads).unwrap();
    assert_eq!((s.oh, s.ow), (2, 3));
    let mut y = vec![0.0; s.output_len()];
    conv2d_grouped::forward_cpu(s, &x, &kernels, &[0.5, 3.0], Activation::Relu, &mut y).unwrap();
    assert_eq!(y, [2100.5, 4300.5, 500.5, 13176.5, 15398.5, 1510.5, 1.0, 0.0, 3.0, 0.0, 0.0, 3.0]);
    // Both channels into one output: the two sums added (the im2col route).
    let s = GroupedConvShape::new(1, 2, (4, 5), 1, (2, 2), 1, (2, 2), pads).unwrap();
    let mut y = vec![0.0; s.output_len()];
    conv2d_grouped::forward_cpu(s, &x, &kernels, &[0.5], Activation::Identity, &mut y).unwrap();
    assert_eq!(y, [2098.5, 4296.5, 500.5, 13164.5, 15384.5, 1510.5]);
}

#[test]
fn grouped_conv_output_size_rounds_down_and_bad_shapes_are_refused() {
    // (h + pads - k) / stride + 1: 320 -> 160 at stride 2, pad 1; 41 -> 21 and 27 -> 14.
    let s = GroupedConvShape::new(1, 3, (320, 320), 16, (3, 3), 1, (2, 2), Pads::all(1)).unwrap();
    assert_eq!((s.oh, s.ow), (160, 160));
    let s = GroupedConvShape::new(1, 16, (41, 27), 16, (3, 3), 16, (2, 2), Pads::all(1)).unwrap();
    assert_eq!((s.oh, s.ow, s.weight_len()), (21, 14, 16 * 9));
    // Groups that divide only one channel count, no groups, a zero stride, a kernel taller
    // than the padded input.
    for (groups, stride, kernel) in [(2, (1, 1), (3, 3)), (0, (1, 1), (3, 3)), (3, (0, 1), (3, 3)), (3, (1, 1), (6, 3))] {
        let err = GroupedConvShape::new(1, 6, (5, 5), 9, kernel, groups, stride, Pads::all(0)).unwrap_err();
        assert!(err.to_string().starts_with("conv2d_grouped: bad shapes"), "{err}");
    }
    let s = GroupedConvShape::new(1, 2, (5, 5), 2, (3, 3), 2, (1, 1), Pads::all(1)).unwrap();
    let mut y = vec![0.0; s.output_len()];
    let err = conv2d_grouped::forward_cpu(s, &[0.0; 50], &[0.0; 18], &[0.0; 1], Activation::Identity, &mut y).unwrap_err();
    assert!(err.to_string().contains("bias has 1 elements, expected 2"), "{err}");
}

#[test]
fn upsample_takes_the_nearest_input_below() {
    // Doubling: out[y][x] = in[y / 2][x / 2].
    let s = UpsampleShape::double(2, 3, (5, 7)).unwrap();
    let x = randn_like(s.input_len(), 1);
    let mut y = vec![0.0; s.output_len()];
    upsample::forward_cpu(s, &x, &mut y).unwrap();
    for p in 0..s.planes {
        for oy in 0..10 {
            for ox in 0..14 {
                assert_eq!(y[(p * 10 + oy) * 14 + ox], x[(p * 5 + oy / 2) * 7 + ox / 2]);
            }
        }
    }
    // To a given size, rows floor(o * 3 / 7) and columns floor(o * 5 / 3), as PyTorch's
    // 'nearest' picks them.
    let s = UpsampleShape::new(1, 1, (3, 5), (7, 3)).unwrap();
    let x: Vec<f32> = (0..15).map(|v| v as f32).collect();
    let mut y = vec![0.0; 21];
    upsample::forward_cpu(s, &x, &mut y).unwrap();
    let (rows, cols) = ([0, 0, 0, 1, 1, 2, 2], [0, 1, 3]);
    let want: Vec<f32> = rows.iter().flat_map(|r| cols.iter().map(move |c| (r * 5 + c) as f32)).collect();
    assert_eq!(y, want);
    assert!(UpsampleShape::new(1, 1, (3, 0), (6, 6)).is_err());
}

#[test]
fn sigmoid_is_exact_to_a_rounding_and_finite_at_the_extremes() {
    let mut x = randn_like(10_000, 5).iter().map(|v| 30.0 * v).collect::<Vec<f32>>();
    x.extend([f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 88.8, -88.8, 104.0, -104.0, 0.0, -0.0]);
    let mut y = vec![0.0; x.len()];
    sigmoid::forward_cpu(&x, &mut y).unwrap();
    for (&x, &y) in x.iter().zip(&y) {
        let want = 1.0 / (1.0 + (-(x as f64)).exp());
        assert!((y as f64 - want).abs() <= 1e-7 && y.is_finite(), "sigmoid({x}) = {y}, want {want}");
    }
    assert_eq!(sigmoid::sigmoid(-1e30), 0.0);
    assert_eq!(sigmoid::sigmoid(1e30), 1.0);
    assert!(sigmoid::sigmoid(f32::NAN).is_nan(), "NaN must pass through, not turn into a score");
}

#[test]
fn add_sums_and_clips() {
    let (a, b) = ([1.0, -2.0, 0.5, f32::NAN], [2.0, 1.0, -0.5, 1.0]);
    let mut out = [0.0; 4];
    add::forward_cpu(&a, &b, Activation::Identity, &mut out).unwrap();
    assert_eq!(out[..3], [3.0, -1.0, 0.0]);
    add::forward_cpu(&a, &b, Activation::Relu, &mut out).unwrap();
    assert_eq!(out[..3], [3.0, 0.0, 0.0]);
    assert!(out[3].is_nan(), "NaN must pass through the ReLU");
    assert!(add::forward_cpu(&a, &b[..3], Activation::Identity, &mut out).is_err());
}
