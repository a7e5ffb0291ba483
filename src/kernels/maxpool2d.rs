//! Max pooling over NCHW planes with a square window and stride equal to the window (Keras'
//! MaxPooling2D with 'valid' padding: a remainder row or column is dropped). The forward pass
//! records the in-plane index of each maximum for the backward pass.

use super::{check_buf, items_per_task, widest_vectors};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// batch * channels
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub size: usize,
}

impl PoolShape {
    pub fn new(batch: usize, channels: usize, (h, w): (usize, usize), size: usize) -> Result<Self> {
        if size == 0 || h < size || w < size {
            return Err(shape_err("maxpool2d", format!("a {size}x{size} window needs an input of at least that size, got {h}x{w}")));
        }
        Ok(PoolShape { planes: batch * channels, h, w, size })
    }
    pub fn oh(&self) -> usize {
        self.h / self.size
    }
    pub fn ow(&self) -> usize {
        self.w / self.size
    }
    pub fn input_len(&self) -> usize {
        self.planes * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.planes * self.oh() * self.ow()
    }
}

pub fn forward_cpu(s: PoolShape, x: &[f32], y: &mut [f32], argmax: &mut [u32]) -> Result<()> {
    check_len("maxpool2d", "input", x.len(), s.input_len())?;
    check_len("maxpool2d", "output", y.len(), s.output_len())?;
    check_len("maxpool2d", "argmax", argmax.len(), s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh() * s.ow());
    y.par_chunks_mut(plane_out.max(1)).zip(argmax.par_chunks_mut(plane_out.max(1))).zip(x.par_chunks(plane_in)).with_min_len(items_per_task(plane_in)).for_each(|((yp, ap), xp)| {
        if s.size == 2 {
            forward_plane_2x2(s, xp, yp, ap)
        } else {
            forward_plane(s, xp, yp, ap)
        }
    });
    Ok(())
}

/// The running maximum `(value, index)` after looking at `v` at `at`. Both plane loops scan
/// each window in row-major order, so keeping only a strictly greater value makes the first
/// maximum win. Written as selects: a data-dependent branch here mispredicts half the time.
fn keep_max((best, best_at): (f32, u32), v: f32, at: u32) -> (f32, u32) {
    let greater = v > best;
    (if greater { v } else { best }, if greater { at } else { best_at })
}

fn forward_plane(s: PoolShape, xp: &[f32], yp: &mut [f32], ap: &mut [u32]) {
    let (ow, size) = (s.ow(), s.size);
    for (oy, (yrow, arow)) in yp.chunks_exact_mut(ow).zip(ap.chunks_exact_mut(ow)).enumerate() {
        for (ox, (y, a)) in yrow.iter_mut().zip(arow.iter_mut()).enumerate() {
            let first = oy * size * s.w + ox * size;
            let mut best = (xp[first], first as u32);
            for dy in 0..size {
                let start = first + dy * s.w;
                for (dx, &v) in xp[start..start + size].iter().enumerate() {
                    best = keep_max(best, v, (start + dx) as u32);
                }
            }
            (*y, *a) = best;
        }
    }
}

widest_vectors! {
/// The models' only window: a fixed 2x2 lets the compiler vectorize across outputs, where the
/// general window's loops take one output at a time.
fn forward_plane_2x2(s: PoolShape, xp: &[f32], yp: &mut [f32], ap: &mut [u32]) {
    let (w, ow) = (s.w, s.ow());
    for (oy, (yrow, arow)) in yp.chunks_exact_mut(ow).zip(ap.chunks_exact_mut(ow)).enumerate() {
        let top = 2 * oy * w;
        let (r0, r1) = (&xp[top..top + 2 * ow], &xp[top + w..top + w + 2 * ow]);
        for (ox, (((y, a), p0), p1)) in yrow.iter_mut().zip(arow.iter_mut()).zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)).enumerate() {
            let left = (top + 2 * ox) as u32;
            let mut best = (p0[0], left);
            for (v, at) in [(p0[1], left + 1), (p1[0], left + w as u32), (p1[1], left + w as u32 + 1)] {
                best = keep_max(best, v, at);
            }
            (*y, *a) = best;
        }
    }
}}

/// `dx` from `dy` through the recorded maxima. With `relu_of`, the pooled outputs, the
/// gradient also goes through the ReLU before the pooling: it passes only where the output is
/// positive, which is where the input it came from was, so the model needs no ReLU pass.
pub fn backward_cpu(s: PoolShape, dy: &[f32], argmax: &[u32], relu_of: Option<&[f32]>, dx: &mut [f32]) -> Result<()> {
    check_len("maxpool2d", "output gradient", dy.len(), s.output_len())?;
    check_len("maxpool2d", "argmax", argmax.len(), s.output_len())?;
    check_len("maxpool2d", "input gradient", dx.len(), s.input_len())?;
    if let Some(y) = relu_of {
        check_len("maxpool2d", "output", y.len(), s.output_len())?;
    }
    let (plane_in, plane_out) = (s.h * s.w, (s.oh() * s.ow()).max(1));
    dx.par_chunks_mut(plane_in).zip(dy.par_chunks(plane_out)).zip(argmax.par_chunks(plane_out)).enumerate().for_each(|(p, ((dxp, dyp), ap))| {
        dxp.fill(0.0);
        let yp = relu_of.map(|y| &y[p * plane_out..][..dyp.len()]);
        for (o, (&g, &at)) in dyp.iter().zip(ap).enumerate() {
            let passes = yp.is_none_or(|y| y[o] > 0.0);
            dxp[at as usize] += if passes { g } else { 0.0 };
        }
    });
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    size: u32,
    oh: u32,
    ow: u32,
    /// Backward: 1 when the gradient also goes through a ReLU before the pooling.
    relu: u32,
    _pad: u32,
}

/// The uniform of one dispatch over `planes` planes.
fn params(s: PoolShape, planes: usize, relu: bool) -> Params {
    Params { planes: planes as u32, h: s.h as u32, w: s.w as u32, size: s.size as u32, oh: s.oh() as u32, ow: s.ow() as u32, relu: relu as u32, _pad: 0 }
}

/// The shader for `s` and the outputs one of its threads takes: maxpool2d_pairs.wgsl's pairs
/// for 2x2 windows on rows a multiple of 4 long, else maxpool2d.wgsl's single outputs.
fn shader(s: PoolShape) -> (&'static shaders::Shader, usize) {
    if s.size == 2 && s.w.is_multiple_of(4) {
        (&shaders::MAXPOOL2D_PAIRS, 2)
    } else {
        (&shaders::MAXPOOL2D, 1)
    }
}

/// Plane ranges per dispatch, so that every binding fits the device.
fn plane_chunks(rec: &Recorder, s: PoolShape) -> Result<Vec<std::ops::Range<usize>>> {
    rec.gpu().plan_chunks("maxpool2d", s.planes, &[4 * (s.h * s.w) as u64, 4 * (s.oh() * s.ow()) as u64], u32::MAX as usize)
}

pub fn forward_gpu(rec: &mut Recorder, s: PoolShape, x: &GpuBuffer<f32>, y: &GpuBuffer<f32>, argmax: &GpuBuffer<u32>) -> Result<()> {
    check_buf("maxpool2d", "input", x, s.input_len())?;
    check_buf("maxpool2d", "output", y, s.output_len())?;
    check_buf("maxpool2d", "argmax", argmax, s.output_len())?;
    let (plane_in, plane_out) = (s.h * s.w, s.oh() * s.ow());
    for r in plane_chunks(rec, s)? {
        let out = r.start * plane_out..r.end * plane_out;
        let bindings = [x.slice(r.start * plane_in..r.end * plane_in), argmax.slice(out.clone()).rw(), y.slice(out).rw()];
        let (shader, per_thread) = shader(s);
        rec.dispatch_linear("maxpool2d", shader, "forward", &params(s, r.len(), false), &bindings, r.len() * plane_out / per_thread, 256)?;
    }
    Ok(())
}

/// See [`backward_cpu`]; `relu_of` is the pooled output.
pub fn backward_gpu(rec: &mut Recorder, s: PoolShape, dy: &GpuBuffer<f32>, argmax: &GpuBuffer<u32>, relu_of: Option<&GpuBuffer<f32>>, dx: &GpuBuffer<f32>) -> Result<()> {
    check_buf("maxpool2d", "output gradient", dy, s.output_len())?;
    check_buf("maxpool2d", "argmax", argmax, s.output_len())?;
    check_buf("maxpool2d", "input gradient", dx, s.input_len())?;
    if let Some(y) = relu_of {
        check_buf("maxpool2d", "output", y, s.output_len())?;
    }
    let (plane_in, plane_out) = (s.h * s.w, s.oh() * s.ow());
    for r in plane_chunks(rec, s)? {
        let out = r.start * plane_out..r.end * plane_out;
        // Without a ReLU the output's binding is not read; dy fills it.
        let pooled = relu_of.unwrap_or(dy).slice(out.clone());
        let bindings = [dy.slice(out.clone()), argmax.slice(out).rw(), dx.slice(r.start * plane_in..r.end * plane_in).rw(), pooled];
        let (shader, per_thread) = shader(s);
        rec.dispatch_linear("maxpool2d", shader, "backward", &params(s, r.len(), relu_of.is_some()), &bindings, r.len() * plane_out / per_thread, 256)?;
    }
    Ok(())
}
