//! Dense (fully connected) layer: `y = x W + b` with x `[batch, in]`, W `[in, out]` (Keras' layout),
//! b `[out]`, and its two backward products `dx = dy W^T` and `dW = x^T dy`, `db = sum dy`.
//! GPU: one register-tiled product on k-major operands (shaders/dense.wgsl) serves all three;
//! an operand not already laid out that way is packed first (shaders/dense_pack.wgsl, or
//! shaders/dense_transpose.wgsl when packing is a transpose).

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
        // crate does on one thread, leaving the others idle. Column blocks of W in parallel
        // instead.
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
    // dy W^T has the gemm crate gather W's columns, a cache line per element once W's rows
    // are longer than one (16 values). Then dx^T = W dy^T, transposed after, packs W by rows
    // instead; for short rows (dense2) the plain product stays faster. Storing the product
    // transposed through gemm's strides would not help: the crate swaps it back to the slow
    // form.
    const CACHE_LINE_VALUES: usize = 16;
    if s.outputs <= CACHE_LINE_VALUES || s.batch == 0 {
        sgemm(s.batch, s.inputs, s.outputs, MatRef::rows(dy, s.outputs), MatRef::transposed(w, s.outputs), dx, false, threads);
        return Ok(());
    }
    let mut dx_t = vec![0.0; s.inputs * s.batch];
    sgemm(s.inputs, s.batch, s.outputs, MatRef::rows(w, s.outputs), MatRef::transposed(dy, s.outputs), &mut dx_t, false, threads);
    for (i, column) in dx_t.chunks_exact(s.batch).enumerate() {
        for (row, &v) in dx.chunks_exact_mut(s.inputs).zip(column) {
            row[i] = v;
        }
    }
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
    a_row4: u32,
    b_row4: u32,
    flags: u32,
    _pad: u32,
}

const ADD_BIAS: u32 = 1;
// A workgroup's 8x8 threads times 16 rows each cover TILE_M rows (and 8 times a thread's
// columns).
const TILE_M: usize = 128;

/// A matrix operand of [`product`]: element (i, k) sits at `slice[i * i_stride + k * k_stride]`,
/// where i is the row m of A or the column n of B.
struct Operand<'a> {
    slice: GpuSlice<'a>,
    i_stride: usize,
    k_stride: usize,
}

/// The operand in dense.wgsl's k-major layout with rows of `width` padded to `pad`: `None` when
/// it already is (then it is bound as it is), else a packed copy: by 4x4 blocks when that is a
/// transpose of whole vec4s (dense_transpose.wgsl), element by element otherwise (dense_pack.wgsl).
fn k_major(rec: &mut Recorder, op: &Operand, k: usize, width: usize, pad: usize) -> Result<Option<GpuBuffer<f32>>> {
    let width_pad = width.next_multiple_of(pad);
    if op.i_stride == 1 && op.k_stride == width_pad {
        return Ok(None);
    }
    let packed = rec.scratch::<f32>(k * width_pad)?;
    let params = [k as u32, width as u32, width_pad as u32, op.k_stride as u32, op.i_stride as u32, 0, 0, 0];
    let bindings = [op.slice, packed.all().rw()];
    if op.k_stride == 1 && k.is_multiple_of(4) && op.i_stride.is_multiple_of(4) {
        let blocks = (k / 4) * (width_pad / 4);
        rec.dispatch_linear("dense_transpose", &shaders::DENSE_TRANSPOSE, "transpose", &params, &bindings, blocks, 64)?;
    } else {
        rec.dispatch_linear("dense_pack", &shaders::DENSE_PACK, "pack", &params, &bindings, packed.len(), 256)?;
    }
    Ok(Some(packed))
}

/// One product `C = A B (+ bias) (+ C)` on the dense shader, with split-K when the output is
/// too small to fill the GPU.
fn product(rec: &mut Recorder, (m, n, k): (usize, usize, usize), a: Operand, b: Operand, bias: GpuSlice, c: GpuSlice, flags: u32) -> Result<()> {
    const A_PAD: usize = 16; // a thread's rows (TILE_M / 8 threads)
                             // At most 4 rows: every thread of a workgroup takes 8 columns (dense.wgsl's SMALL_M), 512 a
                             // workgroup. Else 8 rows of threads, each 16 rows x 8 columns, or 16 columns on a CPU
                             // adapter with subgroups when there are that many (its "wide" variant: 64 accumulators, too
                             // many for a GPU's registers, and A shared across a subgroup), 8 threads' columns a
                             // workgroup. B's rows are padded to a thread's columns.
    let (shader, thread_cols, tile_n, row_tiles) = if m <= 4 {
        (&shaders::DENSE_SMALL_M, 8, 8 * 64, 1)
    } else if rec.gpu().wide_lanes.is_some() && n >= 16 {
        (&shaders::DENSE_WIDE, 16, 16 * 8, m.div_ceil(TILE_M))
    } else {
        (&shaders::DENSE, 8, 8 * 8, m.div_ceil(TILE_M))
    };
    let a_packed = k_major(rec, &a, k, m, A_PAD)?;
    let b_packed = k_major(rec, &b, k, n, thread_cols)?;
    let a_bind = a_packed.as_ref().map_or(a.slice, |p| p.all());
    let b_bind = b_packed.as_ref().map_or(b.slice, |p| p.all());
    let tiles = row_tiles * n.div_ceil(tile_n);
    let target_workgroups = if rec.gpu().cpu_tiles { 4 * rec.gpu().cpu_cores } else { 256 };
    let (splits, k_chunk) = split_k(tiles, k, target_workgroups);
    let mut params =
        Params { m: m as u32, n: n as u32, k: k as u32, k_chunk: k_chunk as u32, a_row4: (m.next_multiple_of(A_PAD) / 4) as u32, b_row4: (n.next_multiple_of(thread_cols) / 4) as u32, flags, _pad: 0 };
    let groups = [n.div_ceil(tile_n) as u32, row_tiles as u32, splits as u32];
    if splits == 1 {
        return rec.dispatch("dense", shader, "gemm", &params, &[a_bind, b_bind, bias, c.rw()], groups);
    }
    // Accumulation into C is applied once, by the pass that adds the splits together; the
    // bias by split 0 (dense.wgsl).
    let partial = rec.scratch::<f32>(splits * m * n)?;
    params.flags = WRITE_SPLITS | (flags & ADD_BIAS);
    rec.dispatch("dense", shader, "gemm", &params, &[a_bind, b_bind, bias, partial.all().rw()], groups)?;
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
        let x_op = Operand { slice: xs, i_stride: s.inputs, k_stride: 1 };
        let w_op = Operand { slice: w.all(), i_stride: 1, k_stride: s.outputs };
        product(rec, (r.len(), s.outputs, s.inputs), x_op, w_op, b.all(), ys, ADD_BIAS)?;
    }
    Ok(())
}

pub fn backward_data_gpu(rec: &mut Recorder, s: DenseShape, dy: &GpuBuffer<f32>, w: &GpuBuffer<f32>, dx: &GpuBuffer<f32>) -> Result<()> {
    s.check(dx.len(), w.len(), dy.len())?;
    for r in row_chunks(rec, s, &[s.inputs, s.outputs])? {
        let dys = dy.slice(r.start * s.outputs..r.end * s.outputs);
        let dxs = dx.slice(r.start * s.inputs..r.end * s.inputs);
        // W read transposed: element (k = out, n = in) sits at w[in * outputs + out].
        let dy_op = Operand { slice: dys, i_stride: s.outputs, k_stride: 1 };
        let wt_op = Operand { slice: w.all(), i_stride: s.outputs, k_stride: 1 };
        product(rec, (r.len(), s.inputs, s.outputs), dy_op, wt_op, w.all(), dxs, 0)?;
    }
    Ok(())
}

/// Overwrites `dw` and `db`.
pub fn backward_weights_gpu(rec: &mut Recorder, s: DenseShape, x: &GpuBuffer<f32>, dy: &GpuBuffer<f32>, dw: &GpuBuffer<f32>, db: &GpuBuffer<f32>) -> Result<()> {
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
        let xt_op = Operand { slice: xs, i_stride: 1, k_stride: s.inputs };
        let dy_op = Operand { slice: dys, i_stride: 1, k_stride: s.outputs };
        product(rec, (s.inputs, s.outputs, r.len()), xt_op, dy_op, xs, dw.all(), flags)?;
        reduce::sum_channels_gpu(rec, dys, (r.len(), s.outputs, 1), db, i > 0)?;
    }
    Ok(())
}
