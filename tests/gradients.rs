//! Every CPU backward pass against central finite differences of its forward pass. The loss is
//! L = sum(r * y) for a fixed random r (so dL/dy = r), accumulated in f64; a spread of
//! coordinates of each input is perturbed.

mod common;

use common::{randn_like, uniform};
use mien::kernels::batchnorm::{self, BnConfig, BnSaved, BnShape};
use mien::kernels::conv2d::{self, Activation, Conv2dShape, Padding};
use mien::kernels::dense::{self, DenseShape};
use mien::kernels::dropout::{self, Mask};
use mien::kernels::maxpool2d::{self, PoolShape};
use mien::kernels::relu;
use mien::kernels::softmax_xent::{self, XentShape};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Compares `analytic` with (L(v + h e_i) - L(v - h e_i)) / 2h at up to 40 coordinates.
fn check(what: &str, v: &[f32], analytic: &[f32], h: f32, tol: f64, loss: impl Fn(&[f32]) -> f64) {
    assert_eq!(v.len(), analytic.len(), "{what}");
    let step = (v.len() / 40).max(1);
    let mut probe = v.to_vec();
    for i in (0..v.len()).step_by(step) {
        probe[i] = v[i] + h;
        let up = loss(&probe);
        probe[i] = v[i] - h;
        let down = loss(&probe);
        probe[i] = v[i];
        let numeric = (up - down) / (2.0 * h as f64);
        let err = (numeric - analytic[i] as f64).abs();
        assert!(err <= tol * (1.0 + numeric.abs()), "{what}[{i}]: analytic {} vs finite difference {numeric}", analytic[i]);
    }
}

#[test]
fn conv2d_gradients() {
    for s in [
        Conv2dShape::new(2, 3, (7, 6), 4, (3, 3), Padding::Same).unwrap(),
        Conv2dShape::new(1, 2, (6, 7), 3, (2, 3), Padding::Valid).unwrap(),
        Conv2dShape::new(2, 2, (5, 5), 2, (4, 4), Padding::Same).unwrap(),
    ] {
        let (x, w, b) = (randn_like(s.input_len(), 1), randn_like(s.weight_len(), 2), randn_like(s.cout, 3));
        let r = randn_like(s.output_len(), 4);
        let mut dx = vec![0.0; x.len()];
        conv2d::backward_data_cpu(s, &r, &w, &mut dx).unwrap();
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; s.cout]);
        conv2d::backward_filter_cpu(s, &x, &r, &mut dw, &mut db).unwrap();
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.output_len()];
            conv2d::forward_cpu(s, x, w, Some(b), Activation::Identity, &mut y).unwrap();
            dot(&y, &r)
        };
        check("conv dx", &x, &dx, 1e-2, 2e-3, |v| loss(v, &w, &b));
        check("conv dw", &w, &dw, 1e-2, 2e-3, |v| loss(&x, v, &b));
        check("conv db", &b, &db, 1e-2, 2e-3, |v| loss(&x, &w, v));
    }
}

#[test]
fn dense_gradients() {
    let s = DenseShape::new(3, 11, 5).unwrap();
    let (x, w, b) = (randn_like(33, 1), randn_like(55, 2), randn_like(5, 3));
    let r = randn_like(15, 4);
    let mut dx = vec![0.0; 33];
    dense::backward_data_cpu(s, &r, &w, &mut dx).unwrap();
    let (mut dw, mut db) = (vec![0.0; 55], vec![0.0; 5]);
    dense::backward_weights_cpu(s, &x, &r, &mut dw, &mut db).unwrap();
    let loss = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; 15];
        dense::forward_cpu(s, x, w, b, &mut y).unwrap();
        dot(&y, &r)
    };
    check("dense dx", &x, &dx, 1e-2, 1e-3, |v| loss(v, &w, &b));
    check("dense dw", &w, &dw, 1e-2, 1e-3, |v| loss(&x, v, &b));
    check("dense db", &b, &db, 1e-2, 1e-3, |v| loss(&x, &w, v));
}

#[test]
fn maxpool_gradient() {
    let s = PoolShape::new(2, 3, (7, 6), 2).unwrap();
    // Distinct values (a shuffled ramp) so no perturbation changes which element is the maximum.
    let x: Vec<f32> = (0..s.input_len()).map(|i| ((i * 37) % s.input_len()) as f32 * 0.1).collect();
    let r = randn_like(s.output_len(), 5);
    let (mut y, mut arg) = (vec![0.0; s.output_len()], vec![0u32; s.output_len()]);
    maxpool2d::forward_cpu(s, &x, &mut y, &mut arg).unwrap();
    let mut dx = vec![0.0; x.len()];
    maxpool2d::backward_cpu(s, &r, &arg, None, &mut dx).unwrap();
    check("maxpool dx", &x, &dx, 1e-2, 1e-3, |v| {
        let (mut y, mut a) = (vec![0.0; s.output_len()], vec![0u32; s.output_len()]);
        maxpool2d::forward_cpu(s, v, &mut y, &mut a).unwrap();
        dot(&y, &r)
    });
}

#[test]
fn relu_and_dropout_gradients() {
    // Keep inputs away from ReLU's kink, where the finite difference straddles it.
    let x: Vec<f32> = randn_like(200, 6).iter().map(|v| if v.abs() < 0.05 { 0.5 } else { *v }).collect();
    let r = randn_like(200, 7);
    let mut dx = vec![0.0; 200];
    relu::backward_cpu(&x, &r, &mut dx).unwrap();
    check("relu dx", &x, &dx, 1e-2, 1e-3, |v| {
        let mut y = vec![0.0; 200];
        relu::forward_cpu(v, &mut y).unwrap();
        dot(&y, &r)
    });
    let mask = Mask::new(0.3, 99).unwrap();
    let mut dmask = vec![0.0; 200];
    dropout::apply_cpu(mask, &r, &mut dmask).unwrap();
    check("dropout dx", &x, &dmask, 1e-2, 1e-3, |v| {
        let mut y = vec![0.0; 200];
        dropout::apply_cpu(mask, v, &mut y).unwrap();
        dot(&y, &r)
    });
}

#[test]
fn softmax_cross_entropy_gradient() {
    let logits = uniform(28, 8, -3.0, 3.0);
    let labels = [0u32, 6, 3, 3];
    let weights = uniform(7, 9, 0.5, 2.0);
    // A teacher's probabilities: rows of positive values that sum to 1.
    let mut soft = uniform(28, 10, 0.01, 1.0);
    for row in soft.chunks_mut(7) {
        let total: f32 = row.iter().sum();
        row.iter_mut().for_each(|q| *q /= total);
    }
    // Labels with smoothing, then labels and a teacher's probabilities mixed.
    for s in [XentShape { batch: 4, classes: 7, smoothing: 0.1, distill: 0.0 }, XentShape { batch: 4, classes: 7, smoothing: 0.1, distill: 0.6 }] {
        let mut probs = vec![0.0; 28];
        softmax_xent::forward_cpu(s, &logits, &labels, &soft, &weights, &mut probs).unwrap();
        let mut grad = vec![0.0; 28];
        softmax_xent::backward_cpu(s, &probs, &labels, &soft, &weights, &mut grad).unwrap();
        check(&format!("softmax-xent dlogits, teacher weight {}", s.distill), &logits, &grad, 1e-3, 2e-3, |v| {
            let mut p = vec![0.0; 28];
            softmax_xent::forward_cpu(s, v, &labels, &soft, &weights, &mut p).unwrap().0 as f64
        });
    }
}

#[test]
fn batchnorm_gradients() {
    let s = BnShape { batch: 3, channels: 2, plane: 5 };
    let cfg = BnConfig::default();
    let x = uniform(s.len(), 10, -2.0, 2.0);
    let (gamma, beta) = (uniform(2, 11, 0.5, 1.5), randn_like(2, 12));
    let r = randn_like(s.len(), 13);
    let forward = |x: &[f32], gamma: &[f32], beta: &[f32]| {
        let (mut rm, mut rv, mut mean, mut invstd, mut y) = (vec![0.0; 2], vec![1.0; 2], vec![0.0; 2], vec![0.0; 2], vec![0.0; s.len()]);
        batchnorm::forward_train_cpu(s, cfg, x, gamma, beta, &mut rm, &mut rv, &mut mean, &mut invstd, &mut y).unwrap();
        (y, mean, invstd)
    };
    let (_, mean, invstd) = forward(&x, &gamma, &beta);
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; s.len()], vec![0.0; 2], vec![0.0; 2]);
    batchnorm::backward_cpu(s, &x, &r, &gamma, BnSaved { mean: &mean, invstd: &invstd }, &mut dx, &mut dgamma, &mut dbeta).unwrap();
    check("batchnorm dx", &x, &dx, 1e-2, 5e-3, |v| dot(&forward(v, &gamma, &beta).0, &r));
    check("batchnorm dgamma", &gamma, &dgamma, 1e-2, 2e-3, |v| dot(&forward(&x, v, &beta).0, &r));
    check("batchnorm dbeta", &beta, &dbeta, 1e-2, 2e-3, |v| dot(&forward(&x, &gamma, v).0, &r));
}

/// The model's backward pass as a whole, on the CPU backend: the parameter gradients of one
/// training step match finite differences of the evaluation loss. The convolutions run with
/// their ReLU fused in (conv2d::Activation), whose gradient a pooling layer after them applies
/// (twice) or a pass of its own (before the middle convolution); the dense layer's ReLU runs
/// on its own. (With the model seeded 3 a finite difference straddles a ReLU's kink.)
#[test]
fn model_gradients_through_fused_relus() {
    use mien::kernels::{adam::AdamConfig, warp};
    use mien::nn::{Backend, Cpu, Model, ModelConfig};
    let config = ModelConfig::from_json(
        r#"{"name": "grad", "input": [1, 48, 48], "classes": 7, "layers": [
            {"type": "conv2d", "filters": 3, "kernel": 3}, {"type": "relu"}, {"type": "max_pool", "size": 4},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same"}, {"type": "relu"},
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same"}, {"type": "relu"}, {"type": "max_pool", "size": 3},
            {"type": "flatten"}, {"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 7}]}"#,
        "grad",
    )
    .unwrap();
    let backend = Cpu;
    let model = std::cell::RefCell::new(Model::new(&backend, config, 4).unwrap());
    let images: Vec<u8> = uniform(4 * 48 * 48, 7, 0.0, 255.0).iter().map(|&v| v as u8).collect();
    let labels = [0u32, 3, 5, 6];
    let start: Vec<Vec<f32>> = model.borrow().params.iter().map(|p| backend.read(&p.value).unwrap()).collect();
    // The gradients are taken at the starting weights; Adam's update after them is undone.
    model.borrow_mut().train_step(&backend, &images, &[warp::centre(48); 4], &labels, 1, AdamConfig::default(), 1).unwrap();
    let grads: Vec<Vec<f32>> = model.borrow().params.iter().map(|p| backend.read(&p.grad).unwrap()).collect();
    for (p, w) in model.borrow().params.iter().zip(&start) {
        backend.write(&p.value, w).unwrap();
    }
    for (i, (w, g)) in start.iter().zip(&grads).enumerate() {
        let name = model.borrow().params[i].name.clone();
        check(&name, w, g, 1e-4, 2e-3, |v| {
            let mut m = model.borrow_mut();
            backend.write(&m.params[i].value, v).unwrap();
            let logits = m.evaluate_batch(&backend, &images, &labels).unwrap().logits.unwrap();
            backend.write(&m.params[i].value, w).unwrap();
            // The mean cross-entropy again, in f64: the f32 loss would limit the differences.
            let rows = logits.chunks(7).zip(&labels);
            rows.map(|(z, &l)| z.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln() - z[l as usize] as f64).sum::<f64>() / labels.len() as f64
        });
    }
}
