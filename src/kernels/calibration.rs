//! Calibration kernels that the benchmarks time to learn what this adapter reaches, as the
//! yardsticks for the other kernels: multiply-adds on registers alone
//! (shaders/fma_calibration.wgsl) for the peak GFLOP/s, a plain, well-shaped SGEMM
//! (shaders/sgemm_calibration.wgsl: row-major, 8x8 outputs a thread) for what a product reaches,
//! and a vec4 copy (shaders/copy_calibration.wgsl) for memory bandwidth.

use super::check_buf;
use crate::error::{shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};

/// `c = a b` for row-major a (m x k), b (k x n), c (m x n), with m and n multiples of 8 (a
/// thread's 8x8 outputs) and k of 4 (a vec4 of a row). The calibration itself is 1024^3; the
/// kernel benchmark also runs it at the product shapes of the layers it is compared with.
pub fn sgemm_gpu(rec: &mut Recorder, (m, n, k): (usize, usize, usize), a: &GpuBuffer<f32>, b: &GpuBuffer<f32>, c: &GpuBuffer<f32>) -> Result<()> {
    if m == 0 || n == 0 || k == 0 || !m.is_multiple_of(8) || !n.is_multiple_of(8) || !k.is_multiple_of(4) {
        return Err(shape_err("sgemm_calibration", format!("{m}x{k} times {k}x{n}: m and n must be positive multiples of 8, k of 4")));
    }
    for (name, buf, len) in [("a", a, m * k), ("b", b, k * n), ("c", c, m * n)] {
        check_buf("sgemm_calibration", name, buf, len)?;
    }
    let params = [m as u32, n as u32, k as u32, 0];
    // 8x8 threads of 8x8 outputs each.
    let groups = [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1];
    rec.dispatch("sgemm_calibration", &shaders::SGEMM_CALIBRATION, "sgemm", &params, &[a.all(), b.all(), c.all().rw()], groups)
}

/// `dst = src`, both `len` floats, `len` a multiple of 4.
pub fn copy_gpu(rec: &mut Recorder, len: usize, src: &GpuBuffer<f32>, dst: &GpuBuffer<f32>) -> Result<()> {
    if !len.is_multiple_of(4) {
        return Err(shape_err("copy_calibration", format!("{len} floats is not a whole number of vec4s")));
    }
    check_buf("copy_calibration", "src", src, len)?;
    check_buf("copy_calibration", "dst", dst, len)?;
    let params = [(len / 4) as u32, 0, 0, 0];
    rec.dispatch_linear("copy_calibration", &shaders::COPY_CALIBRATION, "copy", &params, &[src.all(), dst.all().rw()], len / 4, 256)
}

/// Floating-point operations per thread and iteration of fma_calibration.wgsl: 8 vec4 chains,
/// 16 multiply-adds each.
pub const FMA_FLOPS_PER_ITERATION: f64 = 8.0 * 4.0 * 16.0 * 2.0;

/// fma_calibration.wgsl's constants: x <- x * M + C, converging to 1.
const FMA_M: f32 = 1.0 - 1.0 / 1024.0;
const FMA_C: f32 = 1.0 / 1024.0;

/// `threads` threads of `iterations` rounds each; thread t writes the sum of its chains to
/// `sums[t]`.
pub fn fma_gpu(rec: &mut Recorder, threads: usize, iterations: u32, sums: &GpuBuffer<f32>) -> Result<()> {
    check_buf("fma_calibration", "sums", sums, threads)?;
    let params = [threads as u32, iterations, 0, 0];
    rec.dispatch_linear("fma_calibration", &shaders::FMA_CALIBRATION, "fma_peak", &params, &[sums.all().rw()], threads, 256)
}

/// What [`fma_gpu`] writes: each thread's 32 chains from their per-thread starting values.
pub fn fma_cpu(threads: usize, iterations: u32) -> Vec<f32> {
    (0..threads)
        .map(|t| {
            let s = (t % 1024) as f32 / 1024.0;
            let mut lanes: Vec<f32> = (0..8).flat_map(|chain| (0..4).map(move |c| s + c as f32 * 0.125 + chain as f32 * 0.125)).collect();
            for _ in 0..iterations * 16 {
                lanes.iter_mut().for_each(|x| *x = x.mul_add(FMA_M, FMA_C));
            }
            // Summed in the shader's order: the chains in pairs, then a vec4's lanes.
            let x = |chain: usize, c: usize| lanes[4 * chain + c];
            let total: Vec<f32> = (0..4).map(|c| (x(0, c) + x(1, c)) + (x(2, c) + x(3, c)) + (x(4, c) + x(5, c)) + (x(6, c) + x(7, c))).collect();
            total[0] + total[1] + total[2] + total[3]
        })
        .collect()
}
