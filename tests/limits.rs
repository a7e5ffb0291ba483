//! Work larger than one storage binding is split across dispatches, and input the kernels
//! cannot take is an error naming the op, never a panic inside wgpu.

mod common;

use common::{assert_close, randn_like, small_binding_gpu};
use mien::gpu::Gpu;
use mien::kernels::adam::{self, AdamConfig};
use mien::kernels::batchnorm::{self, BnConfig, BnParams, BnSaved, BnShape};
use mien::kernels::conv2d::{self, Activation, Conv2dShape, Padding};
use mien::kernels::dense::{self, DenseShape};
use mien::kernels::dropout::{self, Mask};
use mien::kernels::maxpool2d::{self, PoolShape};
use mien::kernels::relu;
use mien::kernels::sgd::{self, SgdConfig};
use mien::Error;

fn up(g: &Gpu, v: &[f32]) -> mien::gpu::GpuBuffer<f32> {
    g.upload(v).unwrap()
}

#[test]
fn chunked_conv_and_dense_match_the_cpu() {
    let g = small_binding_gpu();
    assert_eq!(g.binding_limit(), 4096);
    // 1 KiB of output per image: five images need two dispatches of at most four. 29 input
    // channels make 15 pairs, which the wide filter gradient (CPU adapters) rounds up to 16
    // threads, one idle, while the chunks add into dw.
    for s in [Conv2dShape::new(5, 2, (8, 8), 4, (3, 3), Padding::Same).unwrap(), Conv2dShape::new(5, 29, (3, 4), 3, (1, 1), Padding::Valid).unwrap()] {
        let (x, w, b, dy) = (randn_like(s.input_len(), 1), randn_like(s.weight_len(), 2), randn_like(s.cout, 3), randn_like(s.output_len(), 4));
        let mut y = vec![0.0; s.output_len()];
        conv2d::forward_cpu(s, &x, &w, Some(&b), Activation::Identity, &mut y).unwrap();
        let mut dx = vec![0.0; s.input_len()];
        conv2d::backward_data_cpu(s, &dy, &w, &mut dx).unwrap();
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; s.cout]);
        conv2d::backward_filter_cpu(s, &x, &dy, &mut dw, &mut db).unwrap();
        let (xg, wg, bg, dyg) = (up(g, &x), up(g, &w), up(g, &b), up(g, &dy));
        let (yg, dxg, dwg, dbg) = (g.zeros(y.len()).unwrap(), g.zeros(dx.len()).unwrap(), g.zeros(dw.len()).unwrap(), g.zeros(s.cout).unwrap());
        g.run(|rec| {
            conv2d::forward_gpu(rec, s, &xg, &wg, &bg, Activation::Identity, &yg)?;
            conv2d::backward_data_gpu(rec, s, &dyg, &wg, &dxg)?;
            conv2d::backward_filter_gpu(rec, s, &xg, &dyg, &dwg, &dbg)
        })
        .unwrap();
        assert_close("chunked conv forward", &g.read(&yg).unwrap(), &y, 1e-4);
        assert_close("chunked conv dx", &g.read(&dxg).unwrap(), &dx, 1e-4);
        assert_close("chunked conv dw", &g.read(&dwg).unwrap(), &dw, 1e-4);
        assert_close("chunked conv db", &g.read(&dbg).unwrap(), &db, 1e-4);
    }

    let s = DenseShape::new(40, 64, 16).unwrap(); // 16 rows of x per binding: three dispatches
    let (x, w, b, dy) = (randn_like(40 * 64, 5), randn_like(64 * 16, 6), randn_like(16, 7), randn_like(40 * 16, 8));
    let mut y = vec![0.0; 40 * 16];
    dense::forward_cpu(s, &x, &w, &b, &mut y).unwrap();
    let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; 16]);
    dense::backward_weights_cpu(s, &x, &dy, &mut dw, &mut db).unwrap();
    let (xg, wg, bg, dyg) = (up(g, &x), up(g, &w), up(g, &b), up(g, &dy));
    let (yg, dwg, dbg) = (g.zeros(y.len()).unwrap(), g.zeros(dw.len()).unwrap(), g.zeros(16).unwrap());
    g.run(|rec| {
        dense::forward_gpu(rec, s, &xg, &wg, &bg, &yg)?;
        dense::backward_weights_gpu(rec, s, &xg, &dyg, &dwg, &dbg)
    })
    .unwrap();
    assert_close("chunked dense forward", &g.read(&yg).unwrap(), &y, 1e-4);
    assert_close("chunked dense dW", &g.read(&dwg).unwrap(), &dw, 1e-4);
    assert_close("chunked dense db", &g.read(&dbg).unwrap(), &db, 1e-4);
}

#[test]
fn chunked_elementwise_and_pooling_match_the_cpu() {
    let g = small_binding_gpu();
    let n = 5000; // about five 1024-element chunks
    let x = randn_like(n, 1);
    let grad = randn_like(n, 2);
    let mask = Mask::new(0.5, 77).unwrap();
    let (mut y, mut dropped) = (vec![0.0; n], vec![0.0; n]);
    relu::forward_cpu(&x, &mut y).unwrap();
    dropout::apply_cpu(mask, &x, &mut dropped).unwrap();
    let cfg = AdamConfig::default();
    let (mut p, mut m, mut v) = (x.clone(), vec![0.0; n], vec![0.0; n]);
    adam::step_cpu(cfg, 1, &mut p, &grad, &mut m, &mut v).unwrap();
    let sgd_cfg = SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1e-2 };
    let (mut sgd_p, mut buf) = (x.clone(), randn_like(n, 4));
    sgd::step_cpu(sgd_cfg, 2, &mut sgd_p, &grad, &mut buf).unwrap();

    let (xg, gg) = (up(g, &x), up(g, &grad));
    let (yg, dg, pg, mg, vg) = (g.zeros(n).unwrap(), g.zeros(n).unwrap(), up(g, &x), g.zeros(n).unwrap(), g.zeros(n).unwrap());
    let (sgd_pg, bufg) = (up(g, &x), up(g, &randn_like(n, 4)));
    g.run(|rec| {
        relu::forward_gpu(rec, &xg, &yg)?;
        dropout::apply_gpu(rec, mask, &xg, &dg)?;
        adam::step_gpu(rec, cfg, 1, &pg, &gg, &mg, &vg)?;
        sgd::step_gpu(rec, sgd_cfg, 2, &sgd_pg, &gg, &bufg)
    })
    .unwrap();
    assert_eq!(g.read(&yg).unwrap(), y);
    assert_eq!(g.read(&dg).unwrap(), dropped, "chunks must continue the mask where the last one stopped");
    assert_close("chunked adam", &g.read(&pg).unwrap(), &p, 1e-6);
    assert_close("chunked sgd", &g.read(&sgd_pg).unwrap(), &sgd_p, 1e-6);
    assert_close("chunked sgd momentum", &g.read(&bufg).unwrap(), &buf, 1e-6);

    let s = PoolShape::new(10, 4, (8, 8), 2).unwrap(); // 40 planes of 256 bytes: three dispatches
    let x = randn_like(s.input_len(), 3);
    let (mut y, mut arg) = (vec![0.0; s.output_len()], vec![0u32; s.output_len()]);
    maxpool2d::forward_cpu(s, &x, &mut y, &mut arg).unwrap();
    let xg = up(g, &x);
    let (yg, ag) = (g.zeros(y.len()).unwrap(), g.zeros::<u32>(y.len()).unwrap());
    g.run(|rec| maxpool2d::forward_gpu(rec, s, &xg, &yg, &ag)).unwrap();
    assert_eq!(g.read(&yg).unwrap(), y);
}

#[test]
fn a_binding_over_the_limit_is_an_error_naming_the_op() {
    let g = small_binding_gpu();
    let s = BnShape { batch: 4, channels: 3, plane: 100 }; // 4800 bytes: over 4 KiB, and batch norm does not split
    let z = |n| g.zeros::<f32>(n).unwrap();
    let (x, y, c1, c2, c3, c4, c5, c6) = (z(s.len()), z(s.len()), z(3), z(3), z(3), z(3), z(3), z(3));
    let err = g
        .run(|rec| {
            let p = BnParams { gamma: &c1, beta: &c2, running_mean: &c3, running_var: &c4 };
            batchnorm::forward_gpu(rec, s, BnConfig::default(), true, Activation::Identity, &x, p, BnSaved { mean: &c5, invstd: &c6 }, &y)
        })
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { op: "batchnorm_stats", .. }), "{err}");
    assert!(err.to_string().contains("max_storage_buffer_binding_size"), "{err}");
}

#[test]
fn a_buffer_over_the_device_limit_is_an_error() {
    let g = common::gpu();
    let too_many = (g.limits.max_buffer_size / 4 + 1) as usize;
    let err = g.zeros::<f32>(too_many).err().expect("allocation past max_buffer_size must fail");
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
}

#[test]
fn mismatched_shapes_are_errors_naming_the_op_and_shapes() {
    let g = common::gpu();
    let s = Conv2dShape::new(2, 3, (8, 8), 4, (3, 3), Padding::Valid).unwrap();
    let x = g.zeros::<f32>(s.input_len()).unwrap();
    let w = g.zeros::<f32>(s.weight_len() - 1).unwrap();
    let (b, y) = (g.zeros::<f32>(4).unwrap(), g.zeros::<f32>(s.output_len()).unwrap());
    let err = g.run(|rec| conv2d::forward_gpu(rec, s, &x, &w, &b, Activation::Identity, &y)).unwrap_err();
    assert_eq!(err.to_string(), "conv2d: bad shapes: weights has 107 elements, expected 108");

    let err = Conv2dShape::new(1, 1, (2, 2), 1, (3, 3), Padding::Valid).unwrap_err();
    assert!(err.to_string().contains("needs an input of at least that size, got 2x2"), "{err}");
    let err = Conv2dShape::new(1, 1, (3, 0), 1, (3, 3), Padding::Same).unwrap_err();
    assert!(err.to_string().contains("an empty 3x0 input"), "{err}");

    // An empty batch overwrites the gradients with zeros, as the CPU backend does.
    let s = Conv2dShape::new(0, 2, (5, 5), 3, (3, 3), Padding::Same).unwrap();
    let (x, dy) = (g.zeros::<f32>(0).unwrap(), g.zeros::<f32>(0).unwrap());
    let (dw, db) = (g.upload(&vec![7.0f32; s.weight_len()]).unwrap(), g.upload(&[7.0f32; 3]).unwrap());
    g.run(|rec| conv2d::backward_filter_gpu(rec, s, &x, &dy, &dw, &db)).unwrap();
    assert_eq!(g.read(&dw).unwrap(), vec![0.0; s.weight_len()]);
    assert_eq!(g.read(&db).unwrap(), vec![0.0; 3]);

    let mut y = vec![0.0; 10];
    let err = dense::forward_cpu(DenseShape::new(2, 3, 5).unwrap(), &[0.0; 6], &[0.0; 15], &[0.0; 4], &mut y).unwrap_err();
    assert_eq!(err.to_string(), "dense: bad shapes: b has 4 elements, expected 5");
}

#[test]
fn wgpu_errors_become_errors_naming_the_op_not_panics() {
    // A context of its own: the error it provokes must not reach other tests' waits.
    let gpu = &common::open(None, false);
    let too_big = wgpu::BufferDescriptor { label: Some("too big"), size: gpu.limits.max_buffer_size + 4, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false };
    // Inside a scope: the error is the scope's, naming the op.
    match gpu.scoped("a test allocation", || gpu.device.create_buffer(&too_big)) {
        Err(Error::Gpu { op, .. }) => assert_eq!(op, "a test allocation"),
        other => panic!("expected a GPU error, got {:?}", other.map(|_| ())),
    }
    // Outside one: the error comes back from the next wait instead of wgpu's panicking handler.
    let _ = gpu.device.create_buffer(&too_big);
    let err = gpu.run(|_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("GPU error in submitted work"), "{err}");
    gpu.run(|_| Ok(())).expect("the error is reported once");
}
