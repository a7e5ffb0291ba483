//! `cargo bench --bench conv_layers`: the CPU forward pass of each 3x3 convolution of the
//! shipped models alone, at batch 64 and 8, with the route it takes (Winograd's tiling, or
//! im2col): milliseconds a call and GFLOP/s counted at direct convolution's flops.
//! Options after `--`: `--quick` (3 timed calls instead of 9), `--bf16` (products in bf16 on
//! AMX tiles or with AVX-512 BF16 where the CPU has them and the layer's channels fill whole
//! tiles).

use mien::kernels::conv2d::{self, Activation, Conv2dShape, KeptWeights, Padding, Precision};
use mien::kernels::winograd;
use std::time::Instant;

/// (name, input channels, input side, output channels, padding).
const LAYERS: [(&str, usize, usize, usize, Padding); 9] = [
    ("vgg conv1", 1, 40, 64, Padding::Same),
    ("vgg conv2", 64, 40, 64, Padding::Same),
    ("vgg conv3", 64, 20, 128, Padding::Same),
    ("vgg conv4", 128, 20, 128, Padding::Same),
    ("vgg conv5", 128, 10, 256, Padding::Same),
    ("vgg conv6", 256, 10, 256, Padding::Same),
    ("original conv1", 1, 48, 32, Padding::Valid),
    ("original conv2", 32, 46, 64, Padding::Valid),
    ("original conv3", 64, 22, 128, Padding::Valid),
];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 3 } else { 9 };
    let precision = if std::env::args().any(|a| a == "--bf16") { Precision::Bf16 } else { Precision::F32 };
    println!("CPU backend, {} rayon threads; median of {calls} calls after 2 warm-up calls, weights transformed once", rayon::current_num_threads());
    for batch in [64, 8] {
        for (name, cin, side, cout, padding) in LAYERS {
            let s = Conv2dShape::new(batch, cin, (side, side), cout, (3, 3), padding).expect("a valid shape");
            // Values in [-0.5, 0.5) without a generator: only the timing matters here.
            let fill = |len: usize, step: usize| (0..len).map(|i| ((i * step) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
            let (x, w, b) = (fill(s.input_len(), 7919), fill(s.weight_len(), 104_729), vec![0.1; cout]);
            let (mut y, mut kept) = (vec![0.0; s.output_len()], KeptWeights::default());
            let mut call = || {
                let started = Instant::now();
                conv2d::forward_cpu_keeping(s, &x, (&w, &mut kept), Some(&b), Activation::Relu, precision, &mut y).expect("shapes match");
                started.elapsed().as_secs_f64()
            };
            call();
            call();
            let mut seconds: Vec<f64> = (0..calls).map(|_| call()).collect();
            seconds.sort_by(f64::total_cmp);
            let median = seconds[calls / 2];
            let route = match winograd::tiling(&s) {
                _ if conv2d::in_bf16(&s, precision) => "bf16 direct".to_string(),
                None => "im2col".to_string(),
                Some(t) => format!("Winograd F({0}x{0}, 3x3)", t.outputs()),
            };
            println!("batch {batch:>2}  {name:<15} {cin:>3} -> {cout:<3} {side}x{side}  {route:<34} {:>7.2} ms  {:>4.0} GFLOP/s", median * 1e3, s.flops() / median / 1e9);
        }
    }
}
