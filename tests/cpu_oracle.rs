//! The fast CPU kernels (im2col + packed gemm, rayon) against naive loops with f64 sums.

mod common;

use common::{assert_close, naive_conv, naive_matmul, randn_like, transpose};
use mien::kernels::conv2d::{self, Conv2dShape, Padding};
use mien::kernels::dense::{self, DenseShape};

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
    for (i, s) in shapes.into_iter().enumerate() {
        let x = randn_like(s.input_len(), i as u64);
        let w = randn_like(s.weight_len(), 100 + i as u64);
        let b = randn_like(s.cout, 200 + i as u64);
        let mut y = vec![0.0; s.output_len()];
        conv2d::forward_cpu(s, &x, &w, Some(&b), &mut y).unwrap();
        assert_close(&format!("conv {s:?}"), &y, &naive_conv(&s, &x, &w, &b), 1e-5);
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
