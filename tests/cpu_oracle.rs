//! The fast CPU kernels (im2col + packed gemm, rayon) against naive loops with f64 sums, and
//! SGD against PyTorch's update written out.

mod common;

use common::{assert_close, naive_conv, naive_matmul, randn_like, transpose};
use mien::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use mien::kernels::conv2d::{self, Activation, Conv2dShape, Padding};
use mien::kernels::dense::{self, DenseShape};
use mien::kernels::sgd::{self, SgdConfig};

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
    ];
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
            assert_close(&format!("conv {s:?} on {threads} threads"), &y, &naive_conv(&s, &x, &w, &b), 1e-5);
        }
    }
}

#[test]
fn conv_backward_data_is_the_adjoint_of_forward() {
    // <conv(x), dy> = <x, conv_backward_data(dy)> for any x, dy: checked with f64 dot products.
    let s = Conv2dShape::new(2, 3, (9, 8), 4, (3, 3), Padding::Same).unwrap();
    let x = randn_like(s.input_len(), 1);
    let w = randn_like(s.weight_len(), 2);
    let dy = randn_like(s.output_len(), 3);
    let y = naive_conv(&s, &x, &w, &vec![0.0; s.cout]);
    let mut dx = vec![0.0; s.input_len()];
    conv2d::backward_data_cpu(s, &dy, &w, &mut dx).unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
    let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
    assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
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
        batchnorm::forward_infer_cpu(s, cfg, &x, BnParams { gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv }, &mut y_inf).unwrap();

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
