//! 2-D convolution for inference with everything ONNX's Conv has that [`super::conv2d`] lacks:
//! a stride, zero padding of any width on each side, and groups (1 for an ordinary
//! convolution, the channel count for a depthwise one, anything that divides both channel
//! counts). Activations NCHW, weights OIHW as `[cout, cin / groups, kh, kw]`, a bias per
//! output channel, an optional fused ReLU. No backward pass: the networks that need these
//! (YuNet) are not trained here.
//!
//! The CPU takes two routes. Groups of one input channel (depthwise) go direct: a kernel tap
//! adds a scaled input row onto an output row, which the compiler vectorizes at stride 1
//! (YuNet's 3x3, stride-1 window sums its nine taps in registers instead); im2col would copy
//! the input kh * kw times for products only one row deep. Wider groups are im2col + `sgemm`
//! per group, in blocks of output rows that rayon shares out, and a 1x1, stride-1, unpadded
//! convolution (YuNet's pointwise layers) multiplies the input planes as they lie, with no
//! im2col at all. The GPU has a kernel for each route, both in conv2d_grouped.wgsl.
//!
//! [`PointDepthShape`] joins a pointwise convolution and the 3x3 depthwise one after it, as
//! YuNet's units are built: the CPU runs both band by band of rows so that the values between
//! them stay in cache; the GPU runs its two kernels through a buffer.

use super::conv2d::{Activation, Precision};
use super::relu::relu;
use super::{items_per_task, sgemm, widest_vectors, with_col_scratch, MatRef};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, Recorder};
use rayon::prelude::*;
use std::ops::Range;

/// Zero rows and columns added around the input, as ONNX's `pads` (whose order is top, left,
/// bottom, right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pads {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pads {
    /// `p` on every side.
    pub fn all(p: usize) -> Self {
        Pads { top: p, left: p, bottom: p, right: p }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupedConvShape {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub groups: usize,
    /// Rows and columns between the windows of neighbouring outputs.
    pub stride: (usize, usize),
    pub pads: Pads,
    pub oh: usize,
    pub ow: usize,
}

impl GroupedConvShape {
    /// The output side is `(side + pads - kernel) / stride + 1`, rounded down, as ONNX and
    /// PyTorch compute it: input rows or columns past the last whole window are not read.
    pub fn new(batch: usize, cin: usize, (h, w): (usize, usize), cout: usize, (kh, kw): (usize, usize), groups: usize, stride: (usize, usize), pads: Pads) -> Result<Self> {
        let err = |detail: String| Err(shape_err("conv2d_grouped", detail));
        if cin == 0 || cout == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
            return err(format!("channels {cin}->{cout}, kernel {kh}x{kw} and input {h}x{w} must be positive"));
        }
        if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
            return err(format!("{groups} groups must divide both channel counts {cin} and {cout}"));
        }
        if stride.0 == 0 || stride.1 == 0 {
            return err(format!("stride {stride:?} must be positive"));
        }
        let (ph, pw) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
        if ph < kh || pw < kw {
            return err(format!("a {kh}x{kw} kernel needs a padded input of at least that size, got {ph}x{pw}"));
        }
        let (oh, ow) = ((ph - kh) / stride.0 + 1, (pw - kw) / stride.1 + 1);
        Ok(GroupedConvShape { batch, cin, h, w, cout, kh, kw, groups, stride, pads, oh, ow })
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.cin * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.cout * self.oh * self.ow
    }
    pub fn weight_len(&self) -> usize {
        self.cout * self.taps()
    }
    /// Input channels of one group.
    pub fn cin_per_group(&self) -> usize {
        self.cin / self.groups
    }
    /// Output channels of one group.
    pub fn cout_per_group(&self) -> usize {
        self.cout / self.groups
    }
    /// Weights of one output channel, the depth of a group's matrix product: one per (input
    /// channel of its group, kernel tap).
    fn taps(&self) -> usize {
        self.cin_per_group() * self.kh * self.kw
    }
    fn plane(&self) -> usize {
        self.oh * self.ow
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.cout * self.plane() * self.taps()) as f64
    }
    /// A 1x1, stride-1, unpadded convolution: a matrix product of the weights with the input
    /// planes as they lie in memory.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.pads == Pads::all(0)
    }
    /// A 3x3, stride-1, one-pixel-padded window: the one [`depthwise_3x3_rows`] computes.
    fn same_3x3(&self) -> bool {
        (self.kh, self.kw, self.stride, self.pads) == (3, 3, (1, 1), Pads::all(1))
    }

    fn check(&self, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
        check_len("conv2d_grouped", "input", x, self.input_len())?;
        check_len("conv2d_grouped", "weights", w, self.weight_len())?;
        check_len("conv2d_grouped", "bias", b, self.cout)?;
        check_len("conv2d_grouped", "output", y, self.output_len())
    }
}

/// Where kernel column `kx` reads the input rather than the padding: the outputs `cols` of a
/// row, the first of them reading input column `first` (0 when there are none).
struct ColumnSpan {
    cols: Range<usize>,
    first: usize,
}

/// The [`ColumnSpan`] of each kernel column: outputs `ox` whose `ox * sw + kx - pad_left` lies
/// in `0..w`.
fn column_spans(s: &GroupedConvShape) -> Vec<ColumnSpan> {
    let (sw, pad) = (s.stride.1, s.pads.left);
    (0..s.kw)
        .map(|kx| {
            let lo = pad.saturating_sub(kx).div_ceil(sw).min(s.ow);
            let hi = (s.w + pad).saturating_sub(kx).div_ceil(sw).min(s.ow).max(lo);
            ColumnSpan { cols: lo..hi, first: if lo < hi { lo * sw + kx - pad } else { 0 } }
        })
        .collect()
}

/// The input row or column that output `o`'s tap `tap` reads, `None` in the padding.
fn source(o: usize, stride: usize, tap: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + tap).checked_sub(pad).filter(|&i| i < len)
}

/// `f(dst[i], src[i * stride])` for every i of `dst`; the stride-1 case on its own so that
/// it compiles to SIMD. Inlined into the depthwise loop's AVX2 copy.
#[inline(always)]
fn strided(dst: &mut [f32], src: &[f32], stride: usize, f: impl Fn(&mut f32, f32)) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, &s)| f(d, s));
    } else {
        dst.iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, &s)| f(d, s));
    }
}

/// `y = act(conv(x, w) + b)`.
pub fn forward_cpu(s: GroupedConvShape, x: &[f32], w: &[f32], b: &[f32], act: Activation, y: &mut [f32]) -> Result<()> {
    s.check(x.len(), w.len(), b.len(), y.len())?;
    if s.cin_per_group() == 1 {
        depthwise_cpu(&s, x, w, b, act, y);
    } else {
        grouped_cpu(&s, x, w, b, act, y);
    }
    Ok(())
}

/// Groups of one input channel: each output plane from its input plane, a task per plane;
/// a 3x3, stride-1, one-pixel-padded window through [`depthwise_3x3_rows`], any other tap by
/// tap.
fn depthwise_cpu(s: &GroupedConvShape, x: &[f32], w: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    let (in_plane, out_plane, window) = (s.h * s.w, s.plane(), s.kh * s.kw);
    let same_3x3 = s.same_3x3();
    let spans = if same_3x3 { Vec::new() } else { column_spans(s) };
    let zero_row = vec![0.0; if same_3x3 { s.w } else { 0 }];
    y.par_chunks_mut(out_plane).with_min_len(items_per_task(out_plane)).enumerate().for_each(|(at, yp)| {
        let (n, co) = (at / s.cout, at % s.cout);
        let xp = &x[(n * s.cin + co / s.cout_per_group()) * in_plane..][..in_plane];
        if same_3x3 {
            let kernel = Window3x3::new(&w[co * window..][..window], b[co], act);
            depthwise_3x3_rows(s.w, s.h, &Band { rows: xp, first: 0 }, 0, &kernel, &zero_row, yp);
            return;
        }
        yp.fill(b[co]);
        depthwise_plane(s, &spans, xp, &w[co * window..][..window], yp);
        if act == Activation::Relu {
            yp.iter_mut().for_each(|v| *v = relu(*v));
        }
    });
}

widest_vectors! {
/// Adds the taps of window `wp` over input plane `xp` onto output plane `yp`: kh * kw passes
/// over each output row, as wide as the CPU's vectors (the same multiplications and additions
/// at any width, so the same results).
fn depthwise_plane(s: &GroupedConvShape, spans: &[ColumnSpan], xp: &[f32], wp: &[f32], yp: &mut [f32]) {
    let (sh, sw) = s.stride;
    for (oy, yrow) in yp.chunks_exact_mut(s.ow).enumerate() {
        for ky in 0..s.kh {
            let Some(iy) = source(oy, sh, ky, s.pads.top, s.h) else { continue };
            let xrow = &xp[iy * s.w..][..s.w];
            for (span, &wv) in spans.iter().zip(&wp[ky * s.kw..]) {
                strided(&mut yrow[span.cols.clone()], &xrow[span.first..], sw, |d, v| *d += wv * v);
            }
        }
    }
}}

/// One channel's 3x3 window: its taps row by row, its bias and whether a ReLU follows.
struct Window3x3 {
    k: [f32; 9],
    bias: f32,
    relu: bool,
}

impl Window3x3 {
    fn new(k: &[f32], bias: f32, act: Activation) -> Self {
        Window3x3 { k: k.try_into().expect("a 3x3 window"), bias, relu: act == Activation::Relu }
    }
}

/// Consecutive rows of a plane, the first being row `first`: a whole plane, or the band of
/// rows that some output rows read.
struct Band<'a> {
    rows: &'a [f32],
    first: usize,
}

widest_vectors! {
/// Output rows `out_first..` (as many as `yp` holds) of a 3x3, stride-1, one-pixel-padded
/// convolution (YuNet's depthwise layers) of a plane `w` wide and `h` high, reading its rows
/// from `band`. The nine taps of an output are summed in a register and each output stored
/// once: a pass over the row per tap, as [`depthwise_plane`] makes, is bound by its loads and
/// stores. The sums are the same as that route's, in its order (bias, then kernel row by row,
/// left to right); a padding row reads `zero_row`, whose products add nothing.
fn depthwise_3x3_rows(w: usize, h: usize, band: &Band<'_>, out_first: usize, window: &Window3x3, zero_row: &[f32], yp: &mut [f32]) {
    let (k, bias) = (window.k, window.bias);
    let finish = |v: f32| if window.relu { relu(v) } else { v };
    let row = |iy: Option<usize>| iy.filter(|&iy| iy < h).map_or(zero_row, |iy| &band.rows[(iy - band.first) * w..][..w]);
    for (oy, yrow) in (out_first..).zip(yp.chunks_exact_mut(w)) {
        let rows = [row(oy.checked_sub(1)), row(Some(oy)), row(Some(oy + 1))];
        // The edge columns miss a kernel column each: the left one reads columns 0 and 1 (only
        // 0 when the row is one pixel wide), the right one columns w - 2 and w - 1.
        let (mut left, mut right) = (bias, bias);
        for (ky, r) in rows.iter().enumerate() {
            left += k[3 * ky + 1] * r[0];
            if w > 1 {
                left += k[3 * ky + 2] * r[1];
                right += k[3 * ky] * r[w - 2];
                right += k[3 * ky + 1] * r[w - 1];
            }
        }
        yrow[0] = finish(left);
        if w == 1 {
            continue;
        }
        yrow[w - 1] = finish(right);
        // The columns between, 16 at a time; the last 16 overlap the ones before rather than
        // leave up to 15 to a scalar loop (rows of YuNet's deeper layers are 10-160 wide).
        let interior = w.saturating_sub(2);
        if interior < LANES {
            interior_columns(&rows, window, 0, interior, yrow);
            continue;
        }
        for start in (0..interior - LANES).step_by(LANES).chain([interior - LANES]) {
            interior_columns(&rows, window, start, LANES, yrow);
        }
    }
}}

/// Outputs `1 + start..1 + start + len` of a row of [`depthwise_3x3_rows`], whose window
/// reads input columns `start..start + len + 2` of `rows`. Inlined (a closure would not be)
/// so that it is compiled for the caller's vector width.
#[inline(always)]
fn interior_columns(rows: &[&[f32]; 3], window: &Window3x3, start: usize, len: usize, yrow: &mut [f32]) {
    let k = window.k;
    let [[t0, t1, t2], [m0, m1, m2], [b0, b1, b2]] = rows.map(|r| [&r[start..][..len], &r[start + 1..][..len], &r[start + 2..][..len]]);
    for (i, out) in yrow[1 + start..][..len].iter_mut().enumerate() {
        let mut acc = window.bias;
        acc += k[0] * t0[i];
        acc += k[1] * t1[i];
        acc += k[2] * t2[i];
        acc += k[3] * m0[i];
        acc += k[4] * m1[i];
        acc += k[5] * m2[i];
        acc += k[6] * b0[i];
        acc += k[7] * b1[i];
        acc += k[8] * b2[i];
        *out = if window.relu { relu(acc) } else { acc };
    }
}

/// Columns the 3x3 depthwise loop computes at a time: one AVX-512 vector.
const LANES: usize = 16;

/// Output pixels a task of the matrix-product route aims at: its im2col block (27 rows for
/// YuNet's first layer) and its outputs stay in the core's cache between the im2col, the
/// product and the copy into place.
const BLOCK_PIXELS: usize = 2048;

/// A task of the matrix-product route: output rows `rows` of image `image`, to be written
/// into `dests`, those rows of each output channel's plane.
struct RowBlock<'y> {
    image: usize,
    rows: Range<usize>,
    dests: Vec<&'y mut [f32]>,
}

/// Groups of several input channels: im2col + `sgemm` per group, in tasks of one image's block
/// of output rows. A task computes all output channels of its rows into a buffer of its own
/// and copies them into place (the product writes rows `n` apart, the output planes lie
/// `oh * ow` apart); blocks are small enough that this copy stays in cache, and there are
/// enough of them to share a single image among the threads.
fn grouped_cpu(s: &GroupedConvShape, x: &[f32], w: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    let in_img = s.cin * s.h * s.w;
    let tasks = row_blocks(y, s.batch, s.cout, (s.oh, s.ow), s.plane().div_ceil(BLOCK_PIXELS));
    let (taps, cig, cog, spans) = (s.taps(), s.cin_per_group(), s.cout_per_group(), column_spans(s));
    tasks.into_par_iter().for_each(|RowBlock { image, rows, mut dests }| {
        let pixels = rows.len() * s.ow;
        let xi = &x[image * in_img..][..in_img];
        let col_len = if s.pointwise() { 0 } else { taps * pixels };
        // Every value is written below (bias, then im2col), so the thread's reused buffer will do.
        with_col_scratch(s.cout * pixels + col_len, |scratch| {
            let (out, col) = scratch.split_at_mut(s.cout * pixels);
            for (row, &bias) in out.chunks_exact_mut(pixels).zip(b) {
                row.fill(bias);
            }
            for g in 0..s.groups {
                let planes = &xi[g * cig * s.h * s.w..];
                let input = if s.pointwise() {
                    // Channel planes of the group, from the block's first pixel on.
                    MatRef { data: &planes[rows.start * s.ow..], row: s.h * s.w, col: 1 }
                } else {
                    im2col(s, &spans, planes, rows.clone(), col);
                    MatRef::rows(col, pixels)
                };
                sgemm(cog, pixels, taps, MatRef::rows(&w[g * cog * taps..], taps), input, &mut out[g * cog * pixels..], true, 1);
            }
            for (dest, row) in dests.iter_mut().zip(out.chunks_exact(pixels)) {
                match act {
                    Activation::Identity => dest.copy_from_slice(row),
                    Activation::Relu => dest.iter_mut().zip(row).for_each(|(d, &v)| *d = relu(v)),
                }
            }
        });
    });
}

/// The outputs `y` (`batch` images of `channels` planes `oh` x `ow`) cut into tasks of whole
/// output rows: at most `oh / blocks` rows a task (rounded up), fewer when the threads need
/// more tasks than `blocks` an image.
fn row_blocks(y: &mut [f32], batch: usize, channels: usize, (oh, ow): (usize, usize), blocks: usize) -> Vec<RowBlock<'_>> {
    let plane = oh * ow;
    let per_image = blocks.max(rayon::current_num_threads().div_ceil(batch.max(1)));
    let rows = oh.div_ceil(per_image).max(1);
    let mut tasks = Vec::new();
    for (image, yi) in y.chunks_mut(channels * plane).enumerate() {
        let first = tasks.len();
        tasks.extend((0..oh).step_by(rows).map(|r| RowBlock { image, rows: r..(r + rows).min(oh), dests: Vec::with_capacity(channels) }));
        for plane_out in yi.chunks_mut(plane) {
            for (task, part) in tasks[first..].iter_mut().zip(plane_out.chunks_mut(rows * ow)) {
                task.dests.push(part);
            }
        }
    }
    tasks
}

/// A 1x1 convolution and the 3x3 depthwise convolution that alone reads its output (YuNet's
/// units), as one op: `y = act(depthwise(pointwise(x)))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointDepthShape {
    pub pointwise: GroupedConvShape,
    pub depthwise: GroupedConvShape,
    pub act: Activation,
}

impl PointDepthShape {
    /// `pointwise` must be a 1x1, stride-1, unpadded convolution of one group, and `depthwise`
    /// a 3x3, stride-1, one-pixel-padded convolution of each of its output channels.
    pub fn new(pointwise: GroupedConvShape, depthwise: GroupedConvShape, act: Activation) -> Result<Self> {
        let (p, d) = (&pointwise, &depthwise);
        let fits = p.pointwise() && p.groups == 1 && d.same_3x3() && (d.batch, d.cin, d.groups, d.cout, d.h, d.w) == (p.batch, p.cout, p.cout, p.cout, p.oh, p.ow);
        if !fits {
            return Err(shape_err("pointwise_depthwise", format!("{pointwise:?} then {depthwise:?}: not a 1x1 convolution then a 3x3 depthwise one of its output")));
        }
        Ok(PointDepthShape { pointwise, depthwise, act })
    }
}

/// Bytes of pointwise outputs a band of [`pointwise_depthwise_cpu`] holds at most, its two
/// halo rows included: about half the core's L2, so that the depthwise pass reads them from
/// there.
const BAND_BYTES: usize = 1 << 20;

/// `y = act(depthwise(pointwise(x)))` in tasks of output rows: a task computes the pointwise
/// outputs of its rows and the row above and below, every channel, into a buffer of its own,
/// then the depthwise outputs from that buffer. Between the two the values stay in the core's
/// cache instead of going out to memory and back, which bound the two layers run one by one.
/// The halo rows are computed twice, by the tasks on both sides of them. In bf16 (inference
/// on a CPU with AMX tiles or AVX-512 BF16), pointwise layers of whole tiles of channels (32
/// in, 16 out: YuNet's 64 -> 64 ones) make their products in bf16.
pub fn pointwise_depthwise_cpu(s: PointDepthShape, x: &[f32], (w1, b1): (&[f32], &[f32]), (w2, b2): (&[f32], &[f32]), precision: Precision, y: &mut [f32]) -> Result<()> {
    let (p, d) = (s.pointwise, s.depthwise);
    p.check(x.len(), w1.len(), b1.len(), d.input_len())?;
    d.check(d.input_len(), w2.len(), b2.len(), y.len())?;
    let (h, w, plane, channels) = (d.h, d.w, d.h * d.w, d.cin);
    let band_rows = (BAND_BYTES / (4 * channels * w).max(1)).saturating_sub(2).max(1);
    let tiles = PointwiseBf16::of(channels, p.cin, w1, precision);
    let widest = ((band_rows + 2).min(h) * w).next_multiple_of(16);
    let tiles_len = tiles.as_ref().map_or(0, |_| channels * widest + (p.cin * widest).div_ceil(2));
    let tasks = row_blocks(y, d.batch, channels, (h, w), h.div_ceil(band_rows));
    let zero_row = vec![0.0; w];
    tasks.into_par_iter().for_each(|RowBlock { image, rows, dests }| {
        let (lo, hi) = (rows.start.saturating_sub(1), (rows.end + 1).min(h));
        let pixels = (hi - lo) * w;
        let xi = &x[image * p.cin * plane..][..p.cin * plane];
        // Every value is written below (bias, then the product added), so the thread's reused
        // buffer will do.
        with_col_scratch(channels * pixels + tiles_len, |scratch| {
            let (mid, tiles_scratch) = scratch.split_at_mut(channels * pixels);
            match &tiles {
                Some(tiles) => tiles.product(&xi[lo * w..], plane, pixels, b1, mid, tiles_scratch),
                None => {
                    for (row, &bias) in mid.chunks_exact_mut(pixels).zip(b1) {
                        row.fill(bias);
                    }
                    sgemm(channels, pixels, p.cin, MatRef::rows(w1, p.cin), MatRef { data: &xi[lo * w..], row: plane, col: 1 }, mid, true, 1);
                }
            }
            for (c, dest) in dests.into_iter().enumerate() {
                let window = Window3x3::new(&w2[9 * c..][..9], b2[c], s.act);
                depthwise_3x3_rows(w, h, &Band { rows: &mid[c * pixels..][..pixels], first: lo }, rows.start, &window, &zero_row, dest);
            }
        });
    });
    Ok(())
}

/// A pointwise layer's weights in bf16, for its bf16 products.
struct PointwiseBf16 {
    #[cfg(target_arch = "x86_64")]
    weights: Vec<u16>,
    #[cfg(target_arch = "x86_64")]
    cout: usize,
}

impl PointwiseBf16 {
    /// The tiles' form of `w` (`cout` x `cin`) when `precision` asks for bf16 and the shape
    /// fills whole tiles here.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn of(cout: usize, cin: usize, w: &[f32], precision: Precision) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if precision == Precision::Bf16 && super::bf16::available() && super::bf16::fits(cout, 16, cin) {
            return Some(PointwiseBf16 { weights: w.iter().map(|&v| super::bf16::round(v)).collect(), cout });
        }
        None
    }

    /// `mid` (cout x `pixels`) = the weights times `pixels` values of each input channel (the
    /// first at `x`, channels `plane` apart), plus `bias`; `scratch` holds the padded sums and
    /// the input's bf16 pairs.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn product(&self, x: &[f32], plane: usize, pixels: usize, bias: &[f32], mid: &mut [f32], scratch: &mut [f32]) {
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no bf16 products on this architecture");
        #[cfg(target_arch = "x86_64")]
        {
            use super::{bf16, conv2d_bf16};
            let (cout, cin, n) = (self.cout, self.weights.len() / self.cout, pixels.next_multiple_of(16));
            let (sums, pairs) = scratch.split_at_mut(cout * n);
            let pairs: &mut [u16] = &mut bytemuck::cast_slice_mut(pairs)[..cin * n];
            for (pair, out) in pairs.chunks_exact_mut(2 * n).enumerate() {
                let channel = |c: usize| &x[c * plane..][..pixels];
                bf16::interleave(channel(2 * pair), Some(channel(2 * pair + 1)), &mut out[..2 * pixels]);
                out[2 * pixels..].fill(0);
            }
            bf16::gemm(cout, n, cin, &self.weights, pairs, &mut sums[..cout * n], n);
            for ((row, sums), &b) in mid.chunks_exact_mut(pixels).zip(sums.chunks(n)).zip(bias) {
                // One row of `pixels` values out of the `n` computed.
                conv2d_bf16::store_rows(sums, n, pixels, b, false, row);
            }
        }
    }
}

/// Fills `col` (`[cin / groups * kh * kw, rows.len() * ow]`) with the receptive fields of
/// output rows `rows`, reading the group's channel planes at the start of `planes`.
fn im2col(s: &GroupedConvShape, spans: &[ColumnSpan], planes: &[f32], rows: Range<usize>, col: &mut [f32]) {
    let (sh, sw) = s.stride;
    let pixels = rows.len() * s.ow;
    for ci in 0..s.cin_per_group() {
        let plane = &planes[ci * s.h * s.w..][..s.h * s.w];
        for ky in 0..s.kh {
            for (kx, span) in spans.iter().enumerate() {
                let dst = &mut col[((ci * s.kh + ky) * s.kw + kx) * pixels..][..pixels];
                for (oy, out) in rows.clone().zip(dst.chunks_exact_mut(s.ow)) {
                    let Some(iy) = source(oy, sh, ky, s.pads.top, s.h) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..span.cols.start].fill(0.0);
                    out[span.cols.end..].fill(0.0);
                    strided(&mut out[span.cols.clone()], &plane[iy * s.w + span.first..], sw, |d, v| *d = v);
                }
            }
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// Images in this dispatch.
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    cin_per_group: u32,
    cout_per_group: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pad_top: u32,
    pad_left: u32,
    oh: u32,
    ow: u32,
    relu: u32,
    /// Workgroup tiles along the two axes a workgroup's tile spans: output columns and rows
    /// (depthwise), or output channels of a group and output pixels (grouped).
    tiles_a: u32,
    tiles_b: u32,
    _pad: [u32; 2],
}

// conv2d_grouped.wgsl's tiles: a depthwise workgroup of 128 threads covers 8 rows x 64
// columns of one output plane, reading its inputs from a patch in workgroup memory of at most
// DEPTHWISE_PATCH values; a grouped workgroup of 64 threads covers 16 output channels x 64
// pixels.
const DEPTHWISE_ROWS: usize = 8;
const DEPTHWISE_COLS: usize = 64;
const DEPTHWISE_PATCH: usize = 2304;
const DEPTHWISE_THREADS: usize = 128;
const GROUPED_CHANNELS: usize = 16;
const GROUPED_PIXELS: usize = 64;
const GROUPED_THREADS: usize = 64;

/// Whether the depthwise kernel takes `s`: groups of one input channel whose tile's input
/// patch fits the workgroup memory. Larger kernels or strides go through the grouped kernel,
/// which covers every shape (it would waste 15 of its 16 channel lanes on them).
fn fits_depthwise_kernel(s: &GroupedConvShape) -> bool {
    let (sh, sw) = s.stride;
    let patch = ((DEPTHWISE_ROWS - 1) * sh + s.kh) * ((DEPTHWISE_COLS - 1) * sw + s.kw);
    s.cin_per_group() == 1 && patch <= DEPTHWISE_PATCH
}

/// GPU version of [`pointwise_depthwise_cpu`]: the two convolutions' kernels one after the
/// other, through `mid` (the pointwise outputs, `pointwise.output_len()` values).
pub fn pointwise_depthwise_gpu(
    rec: &mut Recorder,
    s: PointDepthShape,
    x: &GpuBuffer<f32>,
    (w1, b1): (&GpuBuffer<f32>, &GpuBuffer<f32>),
    (w2, b2): (&GpuBuffer<f32>, &GpuBuffer<f32>),
    mid: &GpuBuffer<f32>,
    y: &GpuBuffer<f32>,
) -> Result<()> {
    forward_gpu(rec, s.pointwise, x, w1, b1, Activation::Identity, mid)?;
    forward_gpu(rec, s.depthwise, mid, w2, b2, s.act, y)
}

pub fn forward_gpu(rec: &mut Recorder, s: GroupedConvShape, x: &GpuBuffer<f32>, w: &GpuBuffer<f32>, b: &GpuBuffer<f32>, act: Activation, y: &GpuBuffer<f32>) -> Result<()> {
    s.check(x.len(), w.len(), b.len(), y.len())?;
    let (in_img, out_img) = (s.cin * s.h * s.w, s.cout * s.plane());
    let mut params = Params {
        batch: 0,
        cin: s.cin as u32,
        h: s.h as u32,
        w: s.w as u32,
        cout: s.cout as u32,
        cin_per_group: s.cin_per_group() as u32,
        cout_per_group: s.cout_per_group() as u32,
        kh: s.kh as u32,
        kw: s.kw as u32,
        sh: s.stride.0 as u32,
        sw: s.stride.1 as u32,
        pad_top: s.pads.top as u32,
        pad_left: s.pads.left as u32,
        oh: s.oh as u32,
        ow: s.ow as u32,
        relu: (act == Activation::Relu) as u32,
        tiles_a: 0,
        tiles_b: 0,
        _pad: [0; 2],
    };
    // The entry point, its name in profiles, its workgroup size, the tiles (a workgroup each)
    // along the two axes, and how many such grids an image takes: depthwise tiles cover one
    // output plane, grouped ones the output channels of one group.
    let (entry, label, threads, tiles, grids) = if fits_depthwise_kernel(&s) {
        ("depthwise", "conv2d_depthwise", DEPTHWISE_THREADS, (s.ow.div_ceil(DEPTHWISE_COLS), s.oh.div_ceil(DEPTHWISE_ROWS)), s.cout)
    } else {
        ("grouped", "conv2d_grouped", GROUPED_THREADS, (s.cout_per_group().div_ceil(GROUPED_CHANNELS), s.plane().div_ceil(GROUPED_PIXELS)), s.groups)
    };
    (params.tiles_a, params.tiles_b) = (tiles.0 as u32, tiles.1 as u32);
    let per_image = tiles.0 * tiles.1 * grids;
    for r in rec.gpu().plan_chunks("conv2d_grouped", s.batch, &[4 * in_img as u64, 4 * out_img as u64], usize::MAX)? {
        params.batch = r.len() as u32;
        let bindings = [x.slice(r.start * in_img..r.end * in_img), w.all(), b.all(), y.slice(r.start * out_img..r.end * out_img).rw()];
        rec.dispatch_linear(label, &shaders::CONV2D_GROUPED, entry, &params, &bindings, r.len() * per_image * threads, threads as u32)?;
    }
    Ok(())
}
