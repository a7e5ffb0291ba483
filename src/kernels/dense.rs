//! Dense (fully connected) layer: `y = x W + b` with x [batch, in], W [in, out] (Keras' layout),
//! b [out], and its two backward products `dx = dy W^T` and `dW = x^T dy`, `db = sum dy`.
//! GPU: one register-tiled product with strided operands (shaders/dense.wgsl) serves all three.

use super::reduce::{self, split_k, ACCUMULATE, WRITE_SPLITS};
use super::{check_buf, sgemm, MatRef};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, GpuSlice, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseShape {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl DenseShape {
    pub fn new(batch: usize, inputs: usize, outputs: usize) -> Result<Self> {
        if inputs == 0 || outputs == 0 {
            return Err(shape_err("dense", format!("{inputs} inputs -> {outputs} outputs: both must be positive")));
        }
        Ok(DenseShape { batch, inputs, outputs })
    }
    /// Multiply-adds of the forward product, times two.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.inputs * self.outputs) as f64
    }
    fn check(&self, x: usize, w: usize, y: usize) -> Result<()> {
        check_len("dense", "x", x, self.batch * self.inputs)?;
        check_len("dense", "W", w, self.inputs * self.outputs)?;
        check_len("dense", "y", y, self.batch * self.outputs)
    }
}

pub fn forward_cpu(s: DenseShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) -> Result<()> {
    s.check(x.len(), w.len(), y.len())?;
    check_len("dense", "b", b.len(), s.outputs)?;
    for row in y.chunks_mut(s.outputs) {
        row.copy_from_slice(b);
    }
    let threads = rayon::current_num_threads();
    if s.batch == 1 && threads > 1 {
        // A matrix-vector product, bound by reading W once (8 MB for dense1), which the gemm
        // crate does on one thread: a third of batch-1 inference. Column blocks of W in
        // parallel instead.
        let block = s.outputs.div_ceil(threads);
        y.par_chunks_mut(block).enumerate().for_each(|(i, part)| {
            let w_block = MatRef { data: &w[i * block..], row: s.outputs, col: 1 };
            sgemm(1, part.len(), s.inputs, MatRef::rows(x, s.inputs), w_block, part, true, 1);
        });
        return Ok(());
    }
    sgemm(s.batch, s.outputs, s.inputs, MatRef::rows(x, s.inputs), MatRef::rows(w, s.outputs), y, true, threads);
    Ok(())
}

pub fn backward_data_cpu(s: DenseShape, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
    s.check(dx.len(), w.len(), dy.len())?;
    let threads = rayon::current_num_threads();
    sgemm(s.batch, s.inputs, s.outputs, MatRef::rows(dy, s.outputs), MatRef::transposed(w, s.outputs), dx, false, threads);
    Ok(())
}

/// Overwrites `dw` and `db`.
pub fn backward_weights_cpu(s: DenseShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) -> Result<()> {
    s.check(x.len(), dw.len(), dy.len())?;
    check_len("dense", "db", db.len(), s.outputs)?;
    let threads = rayon::current_num_threads();
    sgemm(s.inputs, s.outputs, s.batch, MatRef::transposed(x, s.inputs), MatRef::rows(dy, s.outputs), dw, false, threads);
    reduce::sum_channels_cpu(dy, (s.batch, s.outputs, 1), db);
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    k_chunk: u32,
    a_row: u32,
    a_col: u32,
    b_row: u32,
    b_col: u32,
    flags: u32,
    _pad: [u32; 3],
}

const ADD_BIAS: u32 = 1;
// A workgroup's 8x8 threads times 16x8 outputs each cover TILE_M rows and TILE_N columns.
const TILE_M: usize = 128;
const TILE_N: usize = 64;

/// One strided product `C = A B (+ bias) (+ C)` on the dense shader, with split-K when the
/// output is too small to fill the GPU.
#[allow(clippy::too_many_arguments)]
fn product(
    rec: &mut Recorder,
    (m, n, k): (usize, usize, usize),
    a: (GpuSlice, usize, usize),
    b: (GpuSlice, usize, usize),
    bias: GpuSlice,
    c: GpuSlice,
    flags: u32,
) -> Result<()> {
    let tiles = m.div_ceil(TILE_M) * n.div_ceil(TILE_N);
    let (splits, k_chunk) = split_k(tiles, k);
    let mut params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        k_chunk: k_chunk as u32,
        a_row: a.1 as u32,
        a_col: a.2 as u32,
        b_row: b.1 as u32,
        b_col: b.2 as u32,
        flags,
        _pad: [0; 3],
    };
    let groups = [n.div_ceil(TILE_N) as u32, m.div_ceil(TILE_M) as u32, splits as u32];
    if splits == 1 {
        return rec.dispatch("dense", &shaders::DENSE, "gemm", &params, &[a.0, b.0, bias, c.rw()], groups);
    }
    // Accumulation into C is applied once, by the pass that adds the splits together; the
    // bias by split 0 (dense.wgsl).
    let partial = rec.gpu().zeros::<f32>(splits * m * n)?;
    params.flags = WRITE_SPLITS | (flags & ADD_BIAS);
    rec.dispatch("dense", &shaders::DENSE, "gemm", &params, &[a.0, b.0, bias, partial.all().rw()], groups)?;
    reduce::sum_splits_gpu(rec, &partial, splits, c, m * n, flags & ACCUMULATE != 0)
}

/// Rows of the batch per dispatch, so that the row-split bindings fit the device.
fn row_chunks(rec: &Recorder, s: DenseShape, widths: &[usize]) -> Result<Vec<std::ops::Range<usize>>> {
    let bytes: Vec<u64> = widths.iter().map(|&w| 4 * w as u64).collect();
    let max_rows = rec.gpu().limits.max_compute_workgroups_per_dimension as usize * TILE_M;
    rec.gpu().plan_chunks("dense", s.batch, &bytes, max_rows)
}

pub fn forward_gpu(rec: &mut Recorder, s: DenseShape, x: &GpuBuffer<f32>, w: &GpuBuffer<f32>, b: &GpuBuffer<f32>, y: &GpuBuffer<f32>) -> Result<()> {
    s.check(x.len(), w.len(), y.len())?;
    check_buf("dense", "b", b, s.outputs)?;
    for r in row_chunks(rec, s, &[s.inputs, s.outputs])? {
        let xs = x.slice(r.start * s.inputs..r.end * s.inputs);
        let ys = y.slice(r.start * s.outputs..r.end * s.outputs);
        product(rec, (r.len(), s.outputs, s.inputs), (xs, s.inputs, 1), (w.all(), s.outputs, 1), b.all(), ys, ADD_BIAS)?;
    }
    Ok(())
}

pub fn backward_data_gpu(rec: &mut Recorder, s: DenseShape, dy: &GpuBuffer<f32>, w: &GpuBuffer<f32>, dx: &GpuBuffer<f32>) -> Result<()> {
    s.check(dx.len(), w.len(), dy.len())?;
    for r in row_chunks(rec, s, &[s.inputs, s.outputs])? {
        let dys = dy.slice(r.start * s.outputs..r.end * s.outputs);
        let dxs = dx.slice(r.start * s.inputs..r.end * s.inputs);
        // W read transposed: element (k = out, n = in) sits at w[in * outputs + out].
        product(rec, (r.len(), s.inputs, s.outputs), (dys, s.outputs, 1), (w.all(), 1, s.outputs), w.all(), dxs, 0)?;
    }
    Ok(())
}

/// Overwrites `dw` and `db`.
pub fn backward_weights_gpu(
    rec: &mut Recorder,
    s: DenseShape,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    dw: &GpuBuffer<f32>,
    db: &GpuBuffer<f32>,
) -> Result<()> {
    s.check(x.len(), dw.len(), dy.len())?;
    check_buf("dense", "db", db, s.outputs)?;
    // The batch is the reduction axis here, so chunks of it add into dW.
    let max_rows = u32::MAX as usize;
    let bytes = [4 * s.inputs as u64, 4 * s.outputs as u64];
    for (i, r) in rec.gpu().plan_chunks("dense", s.batch, &bytes, max_rows)?.into_iter().enumerate() {
        let xs = x.slice(r.start * s.inputs..r.end * s.inputs);
        let dys = dy.slice(r.start * s.outputs..r.end * s.outputs);
        let flags = if i > 0 { ACCUMULATE } else { 0 };
        // x read transposed: element (m = in, k = row) sits at x[row * inputs + in]. No bias:
        // xs fills that binding.
        product(rec, (s.inputs, s.outputs, r.len()), (xs, 1, s.inputs), (dys, s.outputs, 1), xs, dw.all(), flags)?;
        reduce::sum_channels_gpu(rec, dys, (r.len(), s.outputs, 1), db, i > 0)?;
    }
    Ok(())
}

