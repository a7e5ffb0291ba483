//! Sums shared by several ops: adding split-K partial products, and summing over every axis
//! but the channel one (bias gradients, a batch's mean loss).

use super::items_per_task;
use crate::error::{check_room, Result};
use crate::gpu::{shaders, GpuBuffer, GpuSlice, Recorder};
use rayon::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    flags: u32,
}

pub(crate) const ACCUMULATE: u32 = 2;
pub(crate) const WRITE_SPLITS: u32 = 4;

/// How many ways to split a product's reduction axis of length `k` when its output has only
/// `tiles` workgroup tiles: enough to give the GPU `target_workgroups`, but never slices
/// shorter than 256 terms, where the extra pass would cost more than it gains.
pub(crate) fn split_k(tiles: usize, k: usize, target_workgroups: usize) -> (usize, usize) {
    let splits = (target_workgroups / tiles.max(1)).clamp(1, k.div_ceil(256).max(1)).min(65535);
    let chunk = k.div_ceil(splits).max(1);
    (k.div_ceil(chunk).max(1), chunk)
}

/// `out[i] (+)= sum over s of partial[s * len + i]`.
pub fn sum_splits_gpu(rec: &mut Recorder, partial: &GpuBuffer<f32>, splits: usize, out: GpuSlice, len: usize, accumulate: bool) -> Result<()> {
    check_room("sum_splits", "partial", partial.len(), splits * len)?;
    check_room("sum_splits", "out", out.elements(), len)?;
    let params = Params { outer: splits as u32, channels: 1, inner: len as u32, flags: if accumulate { ACCUMULATE } else { 0 } };
    rec.dispatch_linear("sum_splits", &shaders::REDUCE, "sum_splits", &params, &[partial.all(), out.rw()], len, 256)
}

/// `out[c] (+)= sum over (o, i) of x[o, c, i]` for `x` seen as [outer, channels, inner].
pub fn sum_channels_gpu(rec: &mut Recorder, x: GpuSlice, (outer, channels, inner): (usize, usize, usize), out: &GpuBuffer<f32>, accumulate: bool) -> Result<()> {
    check_room("sum_channels", "x", x.elements(), outer * channels * inner)?;
    check_room("sum_channels", "out", out.len(), channels)?;
    let params = Params { outer: outer as u32, channels: channels as u32, inner: inner as u32, flags: if accumulate { ACCUMULATE } else { 0 } };
    rec.dispatch_linear("sum_channels", &shaders::REDUCE, "sum_channels", &params, &[x, out.all().rw()], channels, 64)
}

/// CPU version of [`sum_channels_gpu`] (overwrites `out`). Channels run in parallel, each
/// summed in a fixed order, so the result does not depend on the thread count.
pub fn sum_channels_cpu(x: &[f32], (outer, channels, inner): (usize, usize, usize), out: &mut [f32]) {
    out[..channels].par_iter_mut().enumerate().with_min_len(items_per_task(outer * inner)).for_each(|(c, acc)| {
        *acc = (0..outer).map(|o| lane_sum(&x[(o * channels + c) * inner..][..inner])).sum();
    });
}

/// The sum of `xs` in sixteen lanes. `iter().sum()` is one dependent add per element, since
/// the compiler may not reorder float additions, and a conv layer's bias gradient sums every
/// element of its output gradient.
fn lane_sum(xs: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, v)| *l += v);
    }
    lanes.iter().sum::<f32>() + tail
}
