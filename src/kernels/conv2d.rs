//! 2-D convolution, stride 1, any kernel size, 'valid' or 'same' zero padding (Keras' meaning:
//! 'same' pads kh-1 rows in total, the extra one at the bottom for even kernels). Activations are
//! NCHW and weights OIHW (see the module docs of `kernels` for why).
//!
//! The CPU treats it as a matrix product with the im2col matrix of each image (`sgemm`), and
//! its data gradient as the transposed product folded back with col2im; 3x3 layers wide and
//! large enough go through Winograd's F(2x2, 3x3) or F(4x4, 3x3) instead, both ways
//! (`winograd.rs`). In bf16 inference on a CPU with AMX tiles or AVX-512 BF16, layers whose
//! channels fill whole tiles convolve directly in bf16 (`conv2d_bf16.rs`). The GPU convolves directly on weights
//! packed by tap (conv2d_pack.wgsl), and
//! gets the data gradient by running the forward kernel on dy with flipped, transposed weights
//! and complementary padding.

#[cfg(target_arch = "x86_64")]
use super::conv2d_bf16;
use super::reduce::{self, ACCUMULATE, WRITE_SPLITS};
use super::{check_buf, parallel_over_batch, sgemm, winograd, with_col_scratch, MatRef};
use crate::error::{check_len, shape_err, Result};
use crate::gpu::{shaders, GpuBuffer, GpuSlice, Recorder};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Valid,
    Same,
}

/// What the forward pass applies to its outputs as it stores them. A ReLU fused here saves
/// the model a pass over the activations (and a buffer of them); its gradient needs only the
/// stored outputs, since relu(z) > 0 exactly where z > 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

/// What the CPU's convolution products multiply: f32, or bf16 factors with f32 sums where the
/// CPU has AMX tiles or AVX-512 BF16 ([`bf16_available`]), for layers whose channels fill whole
/// tiles (`conv2d_bf16`; the others multiply f32). bf16 keeps 8 bits of each factor, so
/// outputs move by a few tenths of a percent of a layer's largest: for inference, where speed
/// matters more than the last digits, and never for training. The GPU always multiplies f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// Whether this CPU and OS let [`Precision::Bf16`] multiply in bf16 (AMX tiles or AVX-512 BF16).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::bf16::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether `s`'s forward pass multiplies in bf16 at `precision` here.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn in_bf16(s: &Conv2dShape, precision: Precision) -> bool {
    #[cfg(target_arch = "x86_64")]
    return precision == Precision::Bf16 && conv2d_bf16::applies(s);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    /// Zero rows above and columns left of the input; the output size settles the far side.
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Conv2dShape {
    pub fn new(batch: usize, cin: usize, (h, w): (usize, usize), cout: usize, (kh, kw): (usize, usize), padding: Padding) -> Result<Self> {
        if cin == 0 || cout == 0 || kh == 0 || kw == 0 {
            return Err(shape_err("conv2d", format!("channels {cin}->{cout} and kernel {kh}x{kw} must be positive")));
        }
        if h == 0 || w == 0 {
            return Err(shape_err("conv2d", format!("an empty {h}x{w} input")));
        }
        let (pad_top, pad_left, oh, ow) = match padding {
            Padding::Same => ((kh - 1) / 2, (kw - 1) / 2, h, w),
            Padding::Valid => {
                if h < kh || w < kw {
                    return Err(shape_err("conv2d", format!("a {kh}x{kw} kernel with 'valid' padding needs an input of at least that size, got {h}x{w}")));
                }
                (0, 0, h - kh + 1, w - kw + 1)
            }
        };
        Ok(Conv2dShape { batch, cin, h, w, cout, kh, kw, pad_top, pad_left, oh, ow })
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.cin * self.h * self.w
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.cout * self.oh * self.ow
    }
    pub fn weight_len(&self) -> usize {
        self.cout * self.cin * self.kh * self.kw
    }
    /// Rows of the im2col matrix: one per (input channel, kernel tap).
    fn taps(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    pub(crate) fn plane(&self) -> usize {
        self.oh * self.ow
    }
    /// Flops of the forward pass (each backward product costs the same).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.plane() * self.cout * self.taps()) as f64
    }

    /// The convolution that maps dy back to dx (on the GPU, and on the CPU's Winograd route):
    /// channels swap, the weights are flipped (conv2d_pack.wgsl on the GPU), and the padding is
    /// what's left of a full (kh-1) border.
    pub fn data_grad(&self) -> Conv2dShape {
        Conv2dShape {
            batch: self.batch,
            cin: self.cout,
            h: self.oh,
            w: self.ow,
            cout: self.cin,
            kh: self.kh,
            kw: self.kw,
            pad_top: self.kh - 1 - self.pad_top,
            pad_left: self.kw - 1 - self.pad_left,
            oh: self.h,
            ow: self.w,
        }
    }

    /// The same convolution on its zero-padded input: 'valid', no padding left, and rows
    /// widened with zeros to a multiple of `row_align` (extra columns only feed outputs that
    /// are dropped).
    pub fn padded(&self, row_align: usize) -> Conv2dShape {
        Conv2dShape { h: self.oh + self.kh - 1, w: (self.ow + self.kw - 1).next_multiple_of(row_align), pad_top: 0, pad_left: 0, ..*self }
    }

    fn check(&self, x: usize, w: usize, y: usize) -> Result<()> {
        check_len("conv2d", "input", x, self.input_len())?;
        check_len("conv2d", "weights", w, self.weight_len())?;
        check_len("conv2d", "output", y, self.output_len())
    }
}

/// Fills `col` ([cin*kh*kw, oh*ow], row-major) with the receptive fields of one image.
fn im2col(s: &Conv2dShape, img: &[f32], col: &mut [f32]) {
    im2col_rows(s, img, col, 0..s.oh);
}

/// [`im2col`] for the output rows `rows` only: `col` is then [cin*kh*kw, rows.len()*ow].
fn im2col_rows(s: &Conv2dShape, img: &[f32], col: &mut [f32], rows: std::ops::Range<usize>) {
    let n = rows.len() * s.ow;
    for ci in 0..s.cin {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = &mut col[((ci * s.kh + ky) * s.kw + kx) * n..][..n];
                // Output columns whose input column ox + kx - pad_left lies inside the image.
                let lo = s.pad_left.saturating_sub(kx).min(s.ow);
                let hi = (s.w + s.pad_left).saturating_sub(kx).min(s.ow).max(lo);
                for (oy, dst) in rows.clone().zip(row.chunks_exact_mut(s.ow)) {
                    let iy = (oy + ky).wrapping_sub(s.pad_top);
                    if iy >= s.h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &img[(ci * s.h + iy) * s.w..][..s.w];
                    dst[..lo].fill(0.0);
                    dst[lo..hi].copy_from_slice(&src[lo + kx - s.pad_left..hi + kx - s.pad_left]);
                    dst[hi..].fill(0.0);
                }
            }
        }
    }
}

/// Runs `f(image, col scratch, threads)` for every image of the batch, in parallel when the
/// batch is large enough, and tells `f` how many threads its matrix product may use.
fn per_image<T: Send, F>(s: &Conv2dShape, items: Vec<T>, f: F)
where
    F: Fn(T, &mut [f32], usize) + Sync + Send,
{
    let len = s.taps() * s.plane();
    if parallel_over_batch(s.batch) {
        items.into_par_iter().for_each(|item| with_col_scratch(len, |col| f(item, col, 1)));
    } else {
        let threads = rayon::current_num_threads();
        with_col_scratch(len, |col| items.into_iter().for_each(|item| f(item, col, threads)));
    }
}

/// `y = act(conv(x, w) + b)`; `b` may be left out.
pub fn forward_cpu(s: Conv2dShape, x: &[f32], w: &[f32], b: Option<&[f32]>, act: Activation, y: &mut [f32]) -> Result<()> {
    forward_cpu_keeping(s, x, (w, &mut KeptWeights::default()), b, act, Precision::F32, y)
}

/// A layer's weights in the forms the CPU's routes multiply, each made when a route first
/// needs it and kept between calls: inference then reuses them on every call instead of
/// rewriting every weight (10 MB for the VGG model's Winograd transforms, which a small batch,
/// such as a video's 8 faces, does not hide). They belong to one shape (batch aside) and to the
/// weights they were made from: the owner empties them whenever it writes the weights.
#[derive(Default)]
pub struct KeptWeights {
    shape: Option<Conv2dShape>,
    /// Winograd's U in f32, for the shape's tiling.
    winograd: Option<Vec<f32>>,
    /// The weights in bf16 as `conv2d_bf16` reads them.
    #[cfg(target_arch = "x86_64")]
    tiles: Option<Vec<u16>>,
}

impl KeptWeights {
    /// The forms kept for `s`, emptied first if they were made for another shape.
    fn of(&mut self, s: &Conv2dShape) -> &mut Self {
        let shape = Conv2dShape { batch: 0, ..*s };
        if self.shape != Some(shape) {
            *self = KeptWeights { shape: Some(shape), ..KeptWeights::default() };
        }
        self
    }

    /// The weights `w` of `s` in bf16 as `conv2d_bf16` reads them.
    #[cfg(target_arch = "x86_64")]
    fn tiles(&mut self, s: &Conv2dShape, w: &[f32]) -> &[u16] {
        self.of(s).tiles.get_or_insert_with(|| conv2d_bf16::weights(s, w))
    }
}

/// [`forward_cpu`] with a place to keep the weights' other forms between calls, and the
/// precision of the products.
pub fn forward_cpu_keeping(s: Conv2dShape, x: &[f32], (w, kept): (&[f32], &mut KeptWeights), b: Option<&[f32]>, act: Activation, precision: Precision, y: &mut [f32]) -> Result<()> {
    s.check(x.len(), w.len(), y.len())?;
    if let Some(b) = b {
        check_len("conv2d", "bias", b.len(), s.cout)?;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = precision;
    #[cfg(target_arch = "x86_64")]
    if in_bf16(&s, precision) {
        conv2d_bf16::forward(&s, x, kept.tiles(&s, w), b, conv2d_bf16::Store::Plain(act), y);
        return Ok(());
    }
    if winograd::applies(&s) && parallel_over_batch(s.batch) {
        let u = kept.of(&s).winograd.get_or_insert_with(|| winograd::transform_weights(&s, w));
        winograd::forward(&s, x, u, b, act, y);
        return Ok(());
    }
    let (in_img, out_img, plane, taps) = (s.cin * s.h * s.w, s.cout * s.plane(), s.plane(), s.taps());
    // Output rows `rows` of image `xi` into `out` ([cout, rows.len() * ow]).
    let rows_of = |xi: &[f32], rows: std::ops::Range<usize>, out: &mut [f32], col: &mut [f32]| {
        let n = rows.len() * s.ow;
        if n == 0 {
            return;
        }
        for (co, row) in out.chunks_mut(n).enumerate() {
            row.fill(b.map_or(0.0, |b| b[co]));
        }
        im2col_rows(&s, xi, &mut col[..taps * n], rows);
        sgemm(s.cout, n, taps, MatRef::rows(w, taps), MatRef::rows(col, n), out, true, 1);
        if act == Activation::Relu {
            out.iter_mut().for_each(|v| *v = super::relu::relu(*v));
        }
    };
    let threads = rayon::current_num_threads();
    if parallel_over_batch(s.batch) || s.oh < threads {
        let items: Vec<_> = y.chunks_mut(out_img.max(1)).zip(x.chunks(in_img.max(1))).collect();
        per_image(&s, items, |(yo, xi), col, _| rows_of(xi, 0..s.oh, yo, col));
        return Ok(());
    }
    // Fewer images than threads (batch-1 inference): each thread takes a share of the image's
    // output rows, with its own im2col columns and product, in one fork and join per image,
    // and copies its rows of every output channel into place. The gemm crate's own split of
    // the product synchronises its threads several times a call, each time waiting for the
    // slowest of them.
    let share = s.oh.div_ceil(threads);
    for (yo, xi) in y.chunks_mut(out_img).zip(x.chunks(in_img)) {
        // Thread t's destination: its share of rows in each output channel's plane.
        let mut dests: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::with_capacity(s.cout)).collect();
        for plane_out in yo.chunks_mut(plane) {
            for (t, rows) in plane_out.chunks_mut(share * s.ow).enumerate() {
                dests[t].push(rows);
            }
        }
        dests.into_par_iter().enumerate().filter(|(_, d)| !d.is_empty()).for_each(|(t, mut dest)| {
            let rows = (t * share).min(s.oh)..((t + 1) * share).min(s.oh);
            let n = rows.len() * s.ow;
            with_col_scratch(taps * n + s.cout * n, |scratch| {
                let (col, out) = scratch.split_at_mut(taps * n);
                rows_of(xi, rows, out, col);
                for (d, row) in dest.iter_mut().zip(out.chunks(n)) {
                    d.copy_from_slice(row);
                }
            });
        });
    }
    Ok(())
}

/// Whether [`forward_pooled_cpu`] takes `s` at `precision`: in bf16, with even output
/// sides.
pub fn pools_in_bf16(s: &Conv2dShape, precision: Precision) -> bool {
    in_bf16(s, precision) && s.oh.is_multiple_of(2) && s.ow.is_multiple_of(2)
}

/// `y = maxpool2x2(relu(conv(x, w) + b))` in one pass, for shapes that [`pools_in_bf16`] in
/// bf16: the convolution's output is never written, and the pooling needs no pass of its own
/// (nor, in inference, the positions of its maxima).
pub fn forward_pooled_cpu(s: Conv2dShape, x: &[f32], (w, kept): (&[f32], &mut KeptWeights), b: &[f32], y: &mut [f32]) -> Result<()> {
    s.check(x.len(), w.len(), s.output_len())?;
    check_len("conv2d", "bias", b.len(), s.cout)?;
    check_len("conv2d", "pooled output", y.len(), s.output_len() / 4)?;
    if !pools_in_bf16(&s, Precision::Bf16) {
        return Err(shape_err("conv2d", format!("no pooled route for {s:?} here")));
    }
    #[cfg(target_arch = "x86_64")]
    conv2d_bf16::forward(&s, x, kept.tiles(&s, w), Some(b), conv2d_bf16::Store::ReluPooled, y);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kept;
    Ok(())
}

/// dx = W^T dy as columns, folded back onto the image (col2im): this form keeps the matrix
/// product as large as the forward one. Where Winograd's route takes it, the CPU instead
/// convolves dy with the flipped, transposed weights, as the GPU always does.
pub fn backward_data_cpu(s: Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
    s.check(dx.len(), w.len(), dy.len())?;
    // Where Winograd's forward applies to it, the data gradient is that convolution of dy,
    // as on the GPU: the weights flipped and transposed, the padding what's left of a full
    // border.
    let gradient = s.data_grad();
    if winograd::applies(&gradient) && parallel_over_batch(s.batch) {
        let u = winograd::transform_weights(&gradient, &flipped_transposed(&s, w));
        winograd::forward(&gradient, dy, &u, None, Activation::Identity, dx);
        return Ok(());
    }
    let (in_img, out_img, plane, taps) = (s.cin * s.h * s.w, s.cout * s.plane(), s.plane(), s.taps());
    let items: Vec<_> = dx.chunks_mut(in_img.max(1)).zip(dy.chunks(out_img.max(1))).collect();
    per_image(&s, items, |(dxi, dyi), col, threads| {
        sgemm(taps, plane, s.cout, MatRef::transposed(w, taps), MatRef::rows(dyi, plane), col, false, threads);
        col2im(&s, col, dxi);
    });
    Ok(())
}

/// The weights [cout, cin, kh, kw] as [cin, cout, kh, kw], each kernel turned half a turn.
fn flipped_transposed(s: &Conv2dShape, w: &[f32]) -> Vec<f32> {
    let window = s.kh * s.kw;
    let mut out = vec![0.0; w.len()];
    for (pair, kernel) in w.chunks_exact(window).enumerate() {
        let (co, ci) = (pair / s.cin, pair % s.cin);
        let dest = &mut out[(ci * s.cout + co) * window..][..window];
        dest.iter_mut().zip(kernel.iter().rev()).for_each(|(d, &v)| *d = v);
    }
    out
}

/// The adjoint of [`im2col`]: adds each column entry back onto the input pixel it was read from.
fn col2im(s: &Conv2dShape, col: &[f32], img: &mut [f32]) {
    img.fill(0.0);
    let plane = s.plane();
    for ci in 0..s.cin {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = &col[((ci * s.kh + ky) * s.kw + kx) * plane..][..plane];
                let lo = s.pad_left.saturating_sub(kx).min(s.ow);
                let hi = (s.w + s.pad_left).saturating_sub(kx).min(s.ow).max(lo);
                for oy in 0..s.oh {
                    let iy = (oy + ky).wrapping_sub(s.pad_top);
                    if iy >= s.h {
                        continue;
                    }
                    let dst = &mut img[(ci * s.h + iy) * s.w..][..s.w];
                    let src = &row[oy * s.ow..(oy + 1) * s.ow];
                    dst[lo + kx - s.pad_left..hi + kx - s.pad_left].iter_mut().zip(&src[lo..hi]).for_each(|(d, v)| *d += v);
                }
            }
        }
    }
}

/// Overwrites `dw` (`[cout, cin, kh, kw]`) and `db` (`[cout]`).
pub fn backward_filter_cpu(s: Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) -> Result<()> {
    s.check(x.len(), dw.len(), dy.len())?;
    check_len("conv2d", "bias gradient", db.len(), s.cout)?;
    let (in_img, out_img, plane, taps) = (s.cin * s.h * s.w, s.cout * s.plane(), s.plane(), s.taps());
    let image = |i: usize, acc: &mut [f32], col: &mut [f32], threads: usize| {
        im2col(&s, &x[i * in_img..][..in_img], col);
        let dyi = &dy[i * out_img..][..out_img];
        sgemm(s.cout, taps, plane, MatRef::rows(dyi, plane), MatRef::transposed(col, plane), acc, true, threads);
    };
    dw.fill(0.0);
    if parallel_over_batch(s.batch) {
        // Fixed groups of images, each summed in order and then added in order: the result
        // does not depend on how rayon schedules the work, so runs with one seed repeat exactly.
        let group = s.batch.div_ceil(rayon::current_num_threads());
        let partials: Vec<Vec<f32>> = (0..s.batch)
            .collect::<Vec<_>>()
            .par_chunks(group)
            .map(|images| {
                let mut acc = vec![0.0f32; dw.len()];
                with_col_scratch(taps * plane, |col| images.iter().for_each(|&i| image(i, &mut acc, col, 1)));
                acc
            })
            .collect();
        for partial in partials {
            dw.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
        }
    } else {
        with_col_scratch(taps * plane, |col| (0..s.batch).for_each(|i| image(i, dw, col, rayon::current_num_threads())));
    }
    reduce::sum_channels_cpu(dy, (s.batch, s.cout, plane), db);
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    /// Rows at the top and bottom of the input that are zero padding (conv2d.wgsl skips them).
    zero_top: u32,
    zero_bottom: u32,
    flags: u32,
    /// Images whose windows conv2d.wgsl's threads take in a row, and the threads they take.
    group: u32,
    group_threads: u32,
    _pad: [u32; 2],
}

impl Params {
    fn new(s: &Conv2dShape, batch: usize, flags: u32) -> Self {
        Params {
            batch: batch as u32,
            cin: s.cin as u32,
            h: s.h as u32,
            w: s.w as u32,
            cout: s.cout as u32,
            oh: s.oh as u32,
            ow: s.ow as u32,
            kh: s.kh as u32,
            kw: s.kw as u32,
            zero_top: 0,
            zero_bottom: 0,
            flags,
            // One image at a time, a thread per window of 16 outputs (conv2d.wgsl's q_blocks).
            group: 1,
            group_threads: (s.oh * s.w).div_ceil(16) as u32,
            _pad: [0; 2],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FilterParams {
    conv: Params,
    rows_per_split: u32,
    splits: u32,
    pair_threads: u32,
    _pad: u32,
}

// conv2d.wgsl's flags.
const ADD_BIAS: u32 = 1;
const APPLY_RELU: u32 = 2;

/// `images` input images of `s` copied into the zero-bordered planes of `valid`, whose rows
/// must be a multiple of 4 long.
fn pad_gpu(rec: &mut Recorder, s: &Conv2dShape, valid: &Conv2dShape, images: usize, x: GpuSlice) -> Result<GpuBuffer<f32>> {
    debug_assert_eq!(valid.w % 4, 0, "conv2d_pad.wgsl writes whole vec4s");
    let padded = rec.scratch::<f32>(images * s.cin * valid.h * valid.w)?;
    let params = [(images * s.cin) as u32, s.h as u32, s.w as u32, s.pad_top as u32, s.pad_left as u32, valid.h as u32, valid.w as u32, 0];
    // Four vec4s of the padded planes a thread (conv2d_pad.wgsl).
    rec.dispatch_linear("conv2d_pad", &shaders::CONV2D_PAD, "pad", &params, &[x, padded.all().rw()], padded.len().div_ceil(16), 64)?;
    Ok(padded)
}

/// Calls `pass(rec, images, input)` for each chunk of images whose bindings (input, output and
/// any padded copy) fit the device, with the chunk of `x` as the 'valid'-only kernels want it,
/// the input of `valid`: copied into zero-bordered planes (conv2d_pad.wgsl) when that differs
/// from `s`.
fn for_each_valid_chunk(
    rec: &mut Recorder,
    s: &Conv2dShape,
    valid: Conv2dShape,
    x: &GpuBuffer<f32>,
    mut pass: impl FnMut(&mut Recorder, std::ops::Range<usize>, GpuSlice) -> Result<()>,
) -> Result<()> {
    let needs_pad = valid != *s;
    let in_img = s.cin * s.h * s.w;
    let mut image_bytes = vec![4 * in_img as u64, 4 * (s.cout * s.plane()) as u64];
    if needs_pad {
        image_bytes.push(4 * (s.cin * valid.h * valid.w) as u64);
    }
    for r in rec.gpu().plan_chunks("conv2d", s.batch, &image_bytes, usize::MAX)? {
        let xs = x.slice(r.start * in_img..r.end * in_img);
        if needs_pad {
            let padded = pad_gpu(rec, s, &valid, r.len(), xs)?;
            pass(rec, r, padded.all())?;
        } else {
            pass(rec, r, xs)?;
        }
    }
    Ok(())
}

/// The weights of `s` packed for conv2d.wgsl (see conv2d_pack.wgsl): `w` itself, or with
/// `flip` the weights of the convolution whose data gradient `s` is, flipped and transposed.
fn pack_weights_gpu(rec: &mut Recorder, s: &Conv2dShape, w: &GpuBuffer<f32>, flip: bool) -> Result<GpuBuffer<f32>> {
    let packed = rec.scratch::<f32>(packed_len(rec.gpu(), s))?;
    pack_weights_into(rec, s, w, flip, &packed)?;
    Ok(packed)
}

/// Length of the weights of `s` packed for conv2d.wgsl on `gpu`: its taps times its output
/// channels padded to the thread's tile.
pub fn packed_len(gpu: &crate::gpu::Gpu, s: &Conv2dShape) -> usize {
    s.taps() * s.cout.next_multiple_of(channel_tile(gpu, s))
}

fn pack_weights_into(rec: &mut Recorder, s: &Conv2dShape, w: &GpuBuffer<f32>, flip: bool, packed: &GpuBuffer<f32>) -> Result<()> {
    check_buf("conv2d", "packed weights", packed, packed_len(rec.gpu(), s))?;
    let co_pad = packed.len() / s.taps();
    let params = [s.cout as u32, s.cin as u32, s.kh as u32, s.kw as u32, co_pad as u32, flip as u32, 0, 0];
    // One thread per tap and 8 output channels (conv2d_pack.wgsl).
    rec.dispatch_linear("conv2d_pack", &shaders::CONV2D_PACK, "pack", &params, &[w.all(), packed.all().rw()], packed.len() / 8, 64)
}

/// Packs the weights `w` of `s` into `packed` ([`packed_len`] long) for [`forward_packed_gpu`]:
/// for a caller that runs the same weights many times, as inference does.
pub fn pack_forward_weights_gpu(rec: &mut Recorder, s: Conv2dShape, w: &GpuBuffer<f32>, packed: &GpuBuffer<f32>) -> Result<()> {
    check_buf("conv2d", "weights", w, s.weight_len())?;
    pack_weights_into(rec, &s, w, false, packed)
}

/// Output channels a thread of conv2d.wgsl takes (4 x its CO_TILE4): 16, its "wide" variant, on
/// a CPU adapter with subgroups it can share weights across, where a window's input loads then
/// serve twice the multiply-adds (conv1 included, since the weights are shared); 8 on a GPU, whose
/// registers would not hold 16 channels' 64 vec4 accumulators, and where 16 would leave the
/// adapter's cores fewer than two 64-thread workgroups each (conv4 at batch 1: one).
fn channel_tile(gpu: &crate::gpu::Gpu, s: &Conv2dShape) -> usize {
    let windows = s.batch * (s.oh * s.padded(4).w).div_ceil(16);
    let wide_workgroups = (windows * s.cout.div_ceil(16)).div_ceil(64);
    let wide = gpu.wide_lanes.is_some() && wide_workgroups >= 2 * gpu.cpu_cores;
    if wide {
        16
    } else {
        8
    }
}

/// Images per group and threads per group for conv2d.wgsl's wide variant over `images` images
/// of `windows` windows, whose subgroups share weights and so must not straddle two channel
/// blocks: a group's windows are rounded up to whole subgroups of `lanes`. Images are grouped
/// only while the rounding idles more than an eighth of the threads (else as few threads as
/// can be): a group's inputs are reread for each channel block, and a larger group falls out
/// of cache (4 images of conv2's data gradient are 2.4 MB). At batch 64, conv4 (6 windows an
/// image): 4 images, 24 threads; conv2 (132): 1 image, 136 threads.
fn wide_groups(windows: usize, images: usize, lanes: usize) -> (u32, u32) {
    let group_threads = |g: usize| (g * windows).next_multiple_of(lanes);
    let threads = |g: usize| images.div_ceil(g) * group_threads(g);
    let busy = images * windows;
    let group = (1..=lanes).find(|&g| few_idle(threads(g), busy)).unwrap_or_else(|| (1..=lanes).min_by_key(|&g| threads(g)).expect("lanes > 0"));
    (group as u32, group_threads(group) as u32)
}

/// Whether `threads` rounded up from `busy` ones for whole subgroups idle at most an eighth of
/// them: the wide kernels' limit on the rounding, past which they group work differently or
/// give way to the narrow tile.
fn few_idle(threads: usize, busy: usize) -> bool {
    threads * 8 <= busy * 9
}

/// What a pass of conv2d.wgsl computes: a layer's forward output, or (with the weights flipped
/// and transposed) a data gradient, which adds no bias and applies no activation.
#[derive(Clone, Copy)]
enum Output<'a> {
    Forward { bias: &'a GpuBuffer<f32>, act: Activation },
    DataGrad,
}

/// `out` of `s` for weights `packed` by [`pack_weights_gpu`], as passes named after what they
/// compute, so that profiles tell the data gradients from the forward passes.
fn forward_impl(rec: &mut Recorder, s: Conv2dShape, x: &GpuBuffer<f32>, packed: &GpuBuffer<f32>, out: Output, y: &GpuBuffer<f32>) -> Result<()> {
    // conv2d.wgsl reads input rows as vec4s.
    let valid = s.padded(4);
    let out_img = s.cout * s.plane();
    let (label, bias, flags) = match out {
        Output::Forward { bias, act } => ("conv2d_forward", bias, ADD_BIAS | if act == Activation::Relu { APPLY_RELU } else { 0 }),
        // The bias binding is unused then; any buffer fills it.
        Output::DataGrad => ("conv2d_data_grad", packed, 0),
    };
    for_each_valid_chunk(rec, &s, valid, x, |rec, r, input| {
        let mut params = Params::new(&valid, r.len(), flags);
        params.zero_top = s.pad_top as u32;
        params.zero_bottom = (valid.h - s.h - s.pad_top) as u32;
        // One thread per tile of output channels x 16 outputs along the flattened input width
        // (see conv2d.wgsl).
        let tile = channel_tile(rec.gpu(), &s);
        if tile == 16 {
            let lanes = rec.gpu().wide_lanes.expect("the wide tile needs subgroups");
            (params.group, params.group_threads) = wide_groups(params.group_threads as usize, r.len(), lanes as usize);
        }
        let groups = r.len().div_ceil(params.group as usize);
        let threads = groups * s.cout.div_ceil(tile) * params.group_threads as usize;
        let bindings = [input, packed.all(), bias.all(), y.slice(r.start * out_img..r.end * out_img).rw()];
        let shader = match (s.kw == 3, tile == 16) {
            (true, true) => &shaders::CONV2D_THREE_TAPS_WIDE,
            (true, false) => &shaders::CONV2D_THREE_TAPS,
            (false, true) => &shaders::CONV2D_WIDE,
            (false, false) => &shaders::CONV2D,
        };
        rec.dispatch_linear(label, shader, "forward", &params, &bindings, threads, 64)
    })
}

pub fn forward_gpu(rec: &mut Recorder, s: Conv2dShape, x: &GpuBuffer<f32>, w: &GpuBuffer<f32>, b: &GpuBuffer<f32>, act: Activation, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("conv2d", "weights", w, s.weight_len())?;
    check_forward(&s, x, b, y)?;
    let packed = pack_weights_gpu(rec, &s, w, false)?;
    forward_impl(rec, s, x, &packed, Output::Forward { bias: b, act }, y)
}

/// [`forward_gpu`] with weights packed beforehand by [`pack_forward_weights_gpu`].
pub fn forward_packed_gpu(rec: &mut Recorder, s: Conv2dShape, x: &GpuBuffer<f32>, packed: &GpuBuffer<f32>, b: &GpuBuffer<f32>, act: Activation, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("conv2d", "packed weights", packed, packed_len(rec.gpu(), &s))?;
    check_forward(&s, x, b, y)?;
    forward_impl(rec, s, x, packed, Output::Forward { bias: b, act }, y)
}

/// The lengths of a forward pass's input, bias and output, however its weights come.
fn check_forward(s: &Conv2dShape, x: &GpuBuffer<f32>, b: &GpuBuffer<f32>, y: &GpuBuffer<f32>) -> Result<()> {
    check_buf("conv2d", "input", x, s.input_len())?;
    check_buf("conv2d", "output", y, s.output_len())?;
    check_buf("conv2d", "bias", b, s.cout)
}

pub fn backward_data_gpu(rec: &mut Recorder, s: Conv2dShape, dy: &GpuBuffer<f32>, w: &GpuBuffer<f32>, dx: &GpuBuffer<f32>) -> Result<()> {
    s.check(dx.len(), w.len(), dy.len())?;
    let grad = s.data_grad();
    let flipped = pack_weights_gpu(rec, &grad, w, true)?;
    forward_impl(rec, grad, dy, &flipped, Output::DataGrad, dx)
}

/// Overwrites `dw` and `db`.
pub fn backward_filter_gpu(rec: &mut Recorder, s: Conv2dShape, x: &GpuBuffer<f32>, dy: &GpuBuffer<f32>, dw: &GpuBuffer<f32>, db: &GpuBuffer<f32>) -> Result<()> {
    s.check(x.len(), dw.len(), dy.len())?;
    check_buf("conv2d", "bias gradient", db, s.cout)?;
    // Read as it is when no padding is needed; a padded copy has rows a multiple of 4 long,
    // since conv2d_pad.wgsl writes whole vec4s.
    let valid = if s.padded(1) == s { s } else { s.padded(4) };
    let out_img = s.cout * s.plane();
    // One thread per 8 (on a CPU adapter with subgroups 16: the shader's "wide" variant)
    // output channels x 2 input channels x 3x3 block of taps (see conv2d_filter_grad.wgsl),
    // times the splits of the reduction over output rows. The wide variant's subgroups share
    // dy, so each block's pairs are rounded up to whole subgroups; where that would idle more
    // than an eighth of the threads (conv1's one pair) the narrow tile runs instead.
    let pairs = s.cin.div_ceil(2);
    let wide_pairs = rec.gpu().wide_lanes.map(|lanes| pairs.next_multiple_of(lanes as usize)).filter(|&threads| few_idle(threads, pairs));
    let (shader, co_tile, pair_threads) = match wide_pairs {
        Some(threads) => (&shaders::CONV2D_FILTER_GRAD_WIDE, 16, threads),
        None => (&shaders::CONV2D_FILTER_GRAD, 8, pairs),
    };
    let tiles = s.cout.div_ceil(co_tile) * pair_threads * s.kh.div_ceil(3) * s.kw.div_ceil(3);
    // Threads to aim for: enough to fill a GPU, or on a CPU adapter a few workgroups per core.
    // There every split's partial sums are scattered lane by lane and summed again, so the
    // GPU's count would cost more in that traffic than its extra threads could gain on a few
    // cores.
    let target_threads = if rec.gpu().cpu_tiles { 1024 * rec.gpu().cpu_cores } else { 16384 };
    const MIN_PIXELS: usize = 256;
    // The batch is the reduction axis: each chunk of images after the first adds into dw.
    for_each_valid_chunk(rec, &s, valid, x, |rec, r, input| {
        let first = r.start == 0;
        let dys = dy.slice(r.start * out_img..r.end * out_img);
        let rows = r.len() * s.oh;
        // Splits fill the GPU, within what the partial sums' binding can hold.
        let max_splits = (rec.gpu().binding_limit() / (4 * dw.len() as u64)).max(1) as usize;
        let wanted = (target_threads / tiles).min(max_splits).clamp(1, rows.max(1));
        // A split costs a partial sum per weight, written here and read back by reduce.wgsl: at
        // one short row per thread (conv1's 46 pixels) that traffic would rival the work, so
        // each thread walks at least MIN_PIXELS.
        let rows_per_split = rows.div_ceil(wanted).max(MIN_PIXELS.div_ceil(valid.ow)).max(1);
        let splits = rows.div_ceil(rows_per_split).max(1); // one split writes zeros for an empty batch
        let accumulate = if first { 0 } else { ACCUMULATE };
        let mut params = FilterParams { conv: Params::new(&valid, r.len(), accumulate), rows_per_split: rows_per_split as u32, splits: splits as u32, pair_threads: pair_threads as u32, _pad: 0 };
        if splits == 1 {
            return rec.dispatch_linear("conv2d_filter_grad", shader, "filter_grad", &params, &[input, dys, dw.all().rw(), db.all().rw()], tiles, 64);
        }
        let partial_dw = rec.scratch::<f32>(splits * dw.len())?;
        let partial_db = rec.scratch::<f32>(splits * db.len())?;
        params.conv.flags = WRITE_SPLITS;
        rec.dispatch_linear("conv2d_filter_grad", shader, "filter_grad", &params, &[input, dys, partial_dw.all().rw(), partial_db.all().rw()], tiles * splits, 64)?;
        reduce::sum_splits_gpu(rec, &partial_dw, splits, dw.all(), dw.len(), !first)?;
        reduce::sum_splits_gpu(rec, &partial_db, splits, db.all(), db.len(), !first)
    })
}

#[cfg(test)]
mod tests {
    use super::{few_idle, wide_groups};

    #[test]
    fn wide_groups_fill_subgroups_idling_at_most_an_eighth() {
        // The original model's planes on 8 lanes at batch 64: conv2 forward, conv3's data gradient,
        // conv4 forward; and conv3's data gradient for one image, which a group of 2 would half
        // idle.
        assert_eq!(wide_groups(132, 64, 8), (1, 136));
        assert_eq!(wide_groups(33, 64, 8), (2, 72));
        assert_eq!(wide_groups(6, 64, 8), (4, 24));
        assert_eq!(wide_groups(33, 1, 8), (1, 40));
        for lanes in [8, 16, 32, 64] {
            for windows in 1..200 {
                let (group, threads) = wide_groups(windows, 64, lanes);
                let (threads, busy) = (threads as usize, group as usize * windows);
                assert!(threads.is_multiple_of(lanes) && threads >= busy && few_idle(threads, busy), "{windows} windows, {lanes} lanes");
            }
        }
    }
}
