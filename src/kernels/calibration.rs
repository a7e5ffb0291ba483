//! Calibration kernels that the benchmarks time to learn what this adapter reaches, as the
//! yardsticks for the other kernels: a plain, well-shaped SGEMM
//! (shaders/sgemm_calibration.wgsl; square row-major matrices whose side is a multiple of 64)
//! for GFLOP/s, and a vec4 copy (shaders/copy_calibration.wgsl) for memory bandwidth.

use super::check_buf;
use crate::error::{shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};

/// `c = a b` for n x n row-major matrices, n a multiple of 64.
pub fn sgemm_gpu(rec: &mut Recorder, n: usize, a: &GpuBuffer<f32>, b: &GpuBuffer<f32>, c: &GpuBuffer<f32>) -> Result<()> {
    if n == 0 || !n.is_multiple_of(64) {
        return Err(shape_err("sgemm_calibration", format!("side {n} is not a positive multiple of 64")));
    }
    for (name, buf) in [("a", a), ("b", b), ("c", c)] {
        check_buf("sgemm_calibration", name, buf, n * n)?;
    }
    let params = [n as u32, n as u32, n as u32, 0];
    let groups = (n / 64) as u32; // 8x8 threads of 8x8 outputs each
    rec.dispatch("sgemm_calibration", &shaders::SGEMM_CALIBRATION, "sgemm", &params, &[a.all(), b.all(), c.all().rw()], [groups, groups, 1])
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
