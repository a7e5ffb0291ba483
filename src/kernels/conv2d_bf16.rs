//! The forward convolution in bf16 (inference only; on AMX tiles or with AVX-512 BF16 dot
//! products, see [`super::bf16`]), for layers whose input channels come in whole tiles' depth
//! (32) and output channels in whole tiles' rows (16): VGG's layers after the first.
//!
//! No im2col matrix and no Winograd transform: each image's input is laid out once in bf16,
//! channel pairs interleaved as the bf16 products read them, flat, with its zero padding: rows
//! `w + kw - 1` columns wide. Output pixel (oy, ox) is then flat column `oy * width + ox`, and
//! tap (ky, kx) reads flat column `oy * width + ox + ky * width + kx` of that same layout. So the
//! convolution is one matrix product for each tap, over columns shifted by a constant
//! ([`bf16::gemm_shifted`]), of the weights' slice for that tap. The `kw - 1` columns at the
//! end of each output row are computed and thrown away.

use super::bf16;
use super::conv2d::{Activation, Conv2dShape};
use super::{relu::relu, widest_vectors, with_col_scratch};
use rayon::prelude::*;

/// Sums one piece of work keeps (bytes): a piece's products stay within a core's L2 cache.
const SUMS_BYTES: usize = 512 * 1024;

/// Whether `s` runs in bf16 here.
pub fn applies(s: &Conv2dShape) -> bool {
    bf16::available() && bf16::fits(s.cout, 16, s.cin)
}

/// The weights (OIHW) as the products read them: bf16, [cout][tap][cin].
pub fn weights(s: &Conv2dShape, w: &[f32]) -> Vec<u16> {
    let taps = s.kh * s.kw;
    let mut out = vec![0; s.cout * taps * s.cin];
    for (co, row) in out.chunks_exact_mut(taps * s.cin).enumerate() {
        for (t, tap) in row.chunks_exact_mut(s.cin).enumerate() {
            for (ci, v) in tap.iter_mut().enumerate() {
                *v = bf16::round(w[(co * s.cin + ci) * taps + t]);
            }
        }
    }
    out
}

/// How the outputs are stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `act(conv(x, w) + b)`.
    Plain(Activation),
    /// Its ReLU, max-pooled over 2x2 windows (for even output sides): the convolution's own
    /// output is never written, and the pooling needs no pass of its own.
    ReluPooled,
}

/// The convolution with `w16` from [`weights`], stored as `store` says into `y`. Call only
/// where [`applies`].
pub fn forward(s: &Conv2dShape, x: &[f32], w16: &[u16], b: Option<&[f32]>, store: Store, y: &mut [f32]) {
    let width = s.ow + s.kw - 1;
    let shifts: Vec<usize> = (0..s.kh).flat_map(|ky| (0..s.kw).map(move |kx| ky * width + kx)).collect();
    let slack = (s.kh - 1) * width + s.kw - 1;
    // Fewer images than threads (batch-1 inference) share each image's rows among the threads;
    // large planes go in pieces whose sums fit the cache.
    let threads = rayon::current_num_threads();
    let by_threads = if s.batch >= threads { s.oh } else { s.oh.div_ceil(threads.div_ceil(s.batch)) };
    let by_cache = (SUMS_BYTES / (4 * s.cout * width)).max(1);
    // Pooled pieces take whole pairs of rows; each stored row stands for `fold` computed ones.
    let fold = if store == Store::ReluPooled { 2 } else { 1 };
    let piece_rows = by_threads.min(by_cache).max(1).next_multiple_of(fold);
    let (stored_width, plane) = (s.ow / fold, (s.oh / fold) * (s.ow / fold));
    let in_img = s.cin * s.h * s.w;
    let mut pieces: Vec<Piece> = Vec::new();
    for (yo, image) in y.chunks_mut(s.cout * plane).zip(x.chunks(in_img)) {
        let first = pieces.len();
        for r0 in (0..s.oh).step_by(piece_rows) {
            pieces.push(Piece { image, rows: r0..(r0 + piece_rows).min(s.oh), dest: Vec::with_capacity(s.cout) });
        }
        for plane_out in yo.chunks_mut(plane) {
            for (piece, rows) in pieces[first..].iter_mut().zip(plane_out.chunks_mut(piece_rows / fold * stored_width)) {
                piece.dest.push(rows);
            }
        }
    }
    let widest = (piece_rows * width).next_multiple_of(16);
    // The sums, then the laid-out input (two bf16 to an f32 of scratch).
    let (sums_len, input_len) = (s.cout * widest, s.cin * (widest + slack));
    pieces.into_par_iter().for_each(|Piece { image, rows, mut dest }| {
        let n = (rows.len() * width).next_multiple_of(16);
        let input_width = n + slack;
        with_col_scratch(sums_len + input_len.div_ceil(2), |scratch| {
            let (sums, input) = scratch.split_at_mut(sums_len);
            let input: &mut [u16] = &mut bytemuck::cast_slice_mut(input)[..s.cin * input_width];
            lay_out(s, image, rows.start, width, input_width, input);
            bf16::gemm_shifted(s.cout, n, s.cin, &shifts, w16, input, input_width, sums, n);
            for (co, (dest, sums)) in dest.iter_mut().zip(sums.chunks(n)).enumerate() {
                let bias = b.map_or(0.0, |b| b[co]);
                match store {
                    Store::Plain(act) => store_rows(sums, width, s.ow, bias, act == Activation::Relu, dest),
                    Store::ReluPooled => store_pooled_rows(sums, width, s.ow / 2, bias, dest),
                }
            }
        });
    });
}

widest_vectors! {
/// One output channel's rows of `ow` values out of its flat sums (rows `width` apart, the
/// columns past `ow` thrown away), plus `bias`, through a ReLU if `relu_after`.
pub(super) fn store_rows(sums: &[f32], width: usize, ow: usize, bias: f32, relu_after: bool, out: &mut [f32]) {
    for (out, computed) in out.chunks_exact_mut(ow).zip(sums.chunks(width)) {
        if relu_after {
            out.iter_mut().zip(computed).for_each(|(o, &v)| *o = relu(v + bias));
        } else {
            out.iter_mut().zip(computed).for_each(|(o, &v)| *o = v + bias);
        }
    }
}
}

widest_vectors! {
/// One output channel's rows of `half` values, each the maximum of a 2x2 window of its flat
/// sums (rows `width` apart) plus `bias`, through a ReLU (the maximum commutes with both).
fn store_pooled_rows(sums: &[f32], width: usize, half: usize, bias: f32, out: &mut [f32]) {
    for (out, pair) in out.chunks_exact_mut(half).zip(sums.chunks_exact(2 * width)) {
        let (top, bottom) = pair.split_at(width);
        for (j, o) in out.iter_mut().enumerate() {
            let window = top[2 * j].max(top[2 * j + 1]).max(bottom[2 * j].max(bottom[2 * j + 1]));
            *o = relu(window + bias);
        }
    }
}
}

/// A share of the work: output rows of one image.
struct Piece<'a> {
    image: &'a [f32],
    rows: std::ops::Range<usize>,
    /// Those rows of each output channel's plane.
    dest: Vec<&'a mut [f32]>,
}

/// Lays out the padded input rows that output rows from `first_row` read, flat, `width`
/// columns a row, channel pairs interleaved: `input` holds cin / 2 pair rows of
/// `input_width` columns, zero where no input pixel lies.
fn lay_out(s: &Conv2dShape, image: &[f32], first_row: usize, width: usize, input_width: usize, input: &mut [u16]) {
    input.fill(0);
    let padded_rows = input_width / width;
    for (pair, out) in input.chunks_exact_mut(2 * input_width).enumerate() {
        let (c0, c1) = (&image[2 * pair * s.h * s.w..][..s.h * s.w], &image[(2 * pair + 1) * s.h * s.w..][..s.h * s.w]);
        for r in 0..padded_rows {
            let Some(iy) = (first_row + r).checked_sub(s.pad_top).filter(|&iy| iy < s.h) else { continue };
            let at = 2 * (r * width + s.pad_left);
            bf16::interleave(&c0[iy * s.w..][..s.w], Some(&c1[iy * s.w..][..s.w]), &mut out[at..at + 2 * s.w]);
        }
    }
}
