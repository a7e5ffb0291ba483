//! The CPU forward pass of 3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin
//! and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of outputs (a tile) is computed from the 4x4 block of input around it with
//! 16 multiplications per channel pair instead of the 36 of direct convolution. Written as
//! matrices, the convolution becomes 16 products, one for each point of the 4x4 transform
//! domain: `M[p] = U[p] V[p]`, where U holds the weights transformed (`G g G^T`, [cout, cin]
//! per point) and V the input tiles transformed (`B^T d B`, [cin, tiles] per point). The
//! products hold 4/9 of im2col's multiply-adds, and the transforms of input and output around
//! them cost additions only. The transforms' constants are 1 and 1/2, so on finite inputs the
//! results differ from im2col's by rounding alone (tested against naive loops in
//! tests/cpu_oracle.rs).
//!
//! It pays off when the products are neither thin nor mostly spare tiles: from
//! [`MIN_CHANNELS`] input channels, on planes large enough (see [`applies`]), whole images per
//! thread. A layer's data gradient is such a convolution too (`conv2d::backward_data_cpu`).
//! conv2d's im2col path keeps everything else: other kernel sizes, a first layer of one
//! channel, batch 1, small planes, and the filter gradient. The GPU convolves directly.

use super::conv2d::{Activation, Conv2dShape};
use super::{relu::relu, sgemm, widest_vectors, with_col_scratch, MatRef};
use rayon::prelude::*;

/// Points of the 4x4 transform domain: one matrix product each.
const POINTS: usize = 16;

/// Input channels below which 16 products of depth `cin` do worse than im2col's one of depth
/// `9 cin`: the products' fixed costs outweigh the multiply-adds saved.
pub const MIN_CHANNELS: usize = 16;

/// Bytes a block of tiles may take in transformed input and products together: half of a
/// core's L2 cache on current x86 server parts (2 MB), so that the transforms write what the
/// products read, and the products what the output transform reads, without a trip to memory.
const BLOCK_BYTES: usize = 1 << 20;

/// Tiles the transforms take at once: one vector register's worth (AVX-512) for each of the
/// 16 values they combine.
const LANES: usize = 16;

/// Whether [`forward`] computes this convolution: a 3x3 kernel, [`MIN_CHANNELS`] or more, and
/// products (spare tiles included) of at most 2/3 of im2col's multiply-adds. Above that the
/// transforms cost more than the products save: an 8x8 output (16 tiles, numbered as 20 and
/// rounded up to 32) is slower than im2col, a 10x10 one (25 tiles, numbered as 30, rounded up
/// to 32) faster (BENCHMARKS.md).
pub fn applies(s: &Conv2dShape) -> bool {
    s.kh == 3 && s.kw == 3 && s.cin >= MIN_CHANNELS && 3 * POINTS * Plan::of(s).columns() <= 2 * 9 * s.oh * s.ow
}

/// `y = act(conv(x, w) + b)` for a shape that [`applies`], images in parallel, each image a
/// block of tile rows at a time; `u` is the weights `w` through [`transform_weights`].
pub fn forward(s: &Conv2dShape, x: &[f32], u: &[f32], b: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let plan = Plan::of(s);
    let widest = plan.block(0);
    let (v_len, m_len) = (POINTS * s.cin * widest.n, POINTS * s.cout * widest.n);
    let scratch_len = v_len + m_len + (4 * widest.phase_len() + 2 * plan.half).max(4 * widest.n);
    let pairs = s.cout * s.cin;
    let (in_img, out_img) = (s.cin * s.h * s.w, s.cout * s.oh * s.ow);
    y.par_chunks_mut(out_img).zip(x.par_chunks(in_img)).for_each(|(out, img)| {
        with_col_scratch(scratch_len, |scratch| {
            let (v, rest) = scratch.split_at_mut(v_len);
            let (m, rows) = rest.split_at_mut(m_len);
            for block in plan.blocks() {
                let n = block.n;
                let (v, m) = (&mut v[..POINTS * s.cin * n], &mut m[..POINTS * s.cout * n]);
                transform_input(s, &block, img, v, rows);
                for p in 0..POINTS {
                    let (up, vp) = (&u[p * pairs..][..pairs], &v[p * s.cin * n..][..s.cin * n]);
                    sgemm(s.cout, n, s.cin, MatRef::rows(up, s.cin), MatRef::rows(vp, n), &mut m[p * s.cout * n..][..s.cout * n], false, 1);
                }
                transform_output(s, &block, m, b, act, out, rows);
            }
        });
    });
}

/// How an image's tiles are cut into blocks: `tile_rows` rows of tiles, numbered `half` a
/// row, `rows_per_block` rows a block.
struct Plan {
    tile_rows: usize,
    half: usize,
    rows_per_block: usize,
}

impl Plan {
    fn of(s: &Conv2dShape) -> Plan {
        let (tile_rows, half) = (s.oh.div_ceil(2), s.ow.div_ceil(2) + 1);
        let block_tiles = BLOCK_BYTES / (4 * POINTS * (s.cin + s.cout));
        Plan { tile_rows, half, rows_per_block: (block_tiles / half).clamp(1, tile_rows) }
    }
    /// The block that starts at tile row `first`.
    fn block(&self, first: usize) -> Block {
        Block::new(first, self.rows_per_block.min(self.tile_rows - first), self.half)
    }
    fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        (0..self.tile_rows).step_by(self.rows_per_block).map(|first| self.block(first))
    }
    /// Columns of an image's products, spare tiles included.
    fn columns(&self) -> usize {
        self.blocks().map(|b| b.n).sum()
    }
}

/// Tile rows `first..first + rows` of an image. Tile (r, t) covers outputs 2r..2r+2 by
/// 2t..2t+2 and reads inputs 2r..2r+4 by 2t..2t+4 (before padding). The tiles are numbered
/// `r * half + t` with `half` = tiles a row + 1: the one spare tile a row (computed and thrown
/// away) lets every transform run over the block's tiles as one contiguous range, whose
/// inputs are then contiguous too (see [`transform_input`]).
struct Block {
    first: usize,
    rows: usize,
    half: usize,
    /// Tiles numbered, rounded up to whole [`LANES`] (the spare ones are thrown away too):
    /// the columns of the products, whose rows then start on whole vectors.
    n: usize,
}

impl Block {
    fn new(first: usize, rows: usize, half: usize) -> Block {
        Block { first, rows, half, n: (rows * half).next_multiple_of(LANES) }
    }
    /// Values in each of the four phases of the block's input: its rows and columns split by
    /// parity, `half` columns for each of `rows + 1` row pairs, and room for the reads of the
    /// last lanes' tiles, which reach one row pair and one column further.
    fn phase_len(&self) -> usize {
        self.n + self.half + 1
    }
}

/// Kernels a task of [`transform_weights`] transforms.
const KERNELS_PER_TASK: usize = 4096;

/// Values of [`transform_weights`]' result.
pub fn transformed_len(s: &Conv2dShape) -> usize {
    POINTS * s.cout * s.cin
}

/// The weights [cout, cin, 3, 3] as U [16][cout][cin]: `G g G^T` for each 3x3 kernel g, with
/// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]. Shared among the threads:
/// 16/9 of the weights are written (4 MB for VGG's widest layer), which on one thread leaves
/// the others idle.
pub fn transform_weights(s: &Conv2dShape, w: &[f32]) -> Vec<f32> {
    let g_of = |[a, b, c]: [f32; 3]| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let pairs = s.cout * s.cin;
    let mut u = vec![0.0; transformed_len(s)];
    // Task t takes kernels t * KERNELS_PER_TASK.. and the same run of each point's plane.
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..pairs.div_ceil(KERNELS_PER_TASK)).map(|_| Vec::with_capacity(POINTS)).collect();
    for plane in u.chunks_mut(pairs) {
        for (task, part) in tasks.iter_mut().zip(plane.chunks_mut(KERNELS_PER_TASK)) {
            task.push(part);
        }
    }
    tasks.into_par_iter().zip(w.par_chunks(9 * KERNELS_PER_TASK)).for_each(|(mut points, kernels)| {
        for (k, kernel) in kernels.chunks_exact(9).enumerate() {
            // G g, column by column: [4][3].
            let columns = [0, 1, 2].map(|c| g_of([kernel[c], kernel[3 + c], kernel[6 + c]]));
            for i in 0..4 {
                // Row i of (G g) G^T.
                for (j, value) in g_of([columns[0][i], columns[1][i], columns[2][i]]).into_iter().enumerate() {
                    points[4 * i + j][k] = value;
                }
            }
        }
    });
    u
}

widest_vectors! {
/// The block's tiles transformed (`B^T d B`, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
/// [0, 1, 0, -1]]) into V [16][cin][block.n].
///
/// Each channel's input rows of the block are first split into four phases by the parity of
/// row and column: phase (a, b)[r * half + k] = input(2r + a, 2k + b). Tile q = r * half + t
/// then reads input (2r + i, 2t + j) = phase (i % 2, j % 2)[q + (i / 2) * half + j / 2]: each
/// of its 16 values, for consecutive tiles, is consecutive in one phase.
fn transform_input(s: &Conv2dShape, block: &Block, img: &[f32], v: &mut [f32], scratch: &mut [f32]) {
    let (n, half, len) = (block.n, block.half, block.phase_len());
    let (phases, padded) = scratch[..4 * len + 2 * half].split_at_mut(4 * len);
    // Past the block's row pairs: read by the last lanes only, for tiles thrown away.
    let pairs_end = (block.rows + 1) * half;
    phases.chunks_exact_mut(len).for_each(|phase| phase[pairs_end..].fill(0.0));
    let (lo, hi) = (s.pad_left.min(2 * half), (s.pad_left + s.w).min(2 * half));
    padded.fill(0.0);
    for (ci, plane) in img.chunks_exact(s.h * s.w).enumerate() {
        for row in 0..2 * block.rows + 2 {
            let iy = (2 * block.first + row).wrapping_sub(s.pad_top);
            let at = (row / 2) * half;
            let (even, odd) = phases[2 * (row % 2) * len..][..2 * len].split_at_mut(len);
            if iy >= s.h {
                even[at..at + half].fill(0.0);
                odd[at..at + half].fill(0.0);
                continue;
            }
            // The row with its padding (outside lo..hi, zero throughout), then split into its
            // even and odd columns.
            padded[lo..hi].copy_from_slice(&plane[iy * s.w..][..hi - lo]);
            for ((pair, e), o) in padded.chunks_exact(2).zip(&mut even[at..at + half]).zip(&mut odd[at..at + half]) {
                (*e, *o) = (pair[0], pair[1]);
            }
        }
        for q in (0..n).step_by(LANES) {
            // d[i][j][lane]: the tile's input (i, j) for tiles q..q + LANES.
            let d: [[&[f32]; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| &phases[(2 * (i % 2) + j % 2) * len + q + (i / 2) * half + j / 2..][..LANES]));
            // B^T d, row by row: t[i][j] over the lanes.
            let mut t = [[[0.0f32; LANES]; 4]; 4];
            for j in 0..4 {
                for k in 0..LANES {
                    t[0][j][k] = d[0][j][k] - d[2][j][k];
                    t[1][j][k] = d[1][j][k] + d[2][j][k];
                    t[2][j][k] = d[2][j][k] - d[1][j][k];
                    t[3][j][k] = d[1][j][k] - d[3][j][k];
                }
            }
            // Then times B, and out to point 4i + j.
            for (i, t) in t.iter().enumerate() {
                let mut row = [[0.0f32; LANES]; 4];
                for k in 0..LANES {
                    row[0][k] = t[0][k] - t[2][k];
                    row[1][k] = t[1][k] + t[2][k];
                    row[2][k] = t[2][k] - t[1][k];
                    row[3][k] = t[1][k] - t[3][k];
                }
                for (j, values) in row.iter().enumerate() {
                    v[((4 * i + j) * s.cin + ci) * n + q..][..LANES].copy_from_slice(values);
                }
            }
        }
    }
}
}

widest_vectors! {
/// The block's outputs from its products M [16][cout][block.n]: `A^T m A` with
/// A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], plus the bias, through `act`, computed for the
/// block's tiles over the lanes and then laid out two columns a tile into the output rows.
fn transform_output(s: &Conv2dShape, block: &Block, m: &[f32], b: Option<&[f32]>, act: Activation, out: &mut [f32], scratch: &mut [f32]) {
    let (n, half) = (block.n, block.half);
    // The tiles' four outputs: top left, top right, bottom left, bottom right, n of each.
    let corners = &mut scratch[..4 * n];
    for (co, plane) in out.chunks_exact_mut(s.oh * s.ow).enumerate() {
        let bias = b.map_or(0.0, |b| b[co]);
        for q in (0..n).step_by(LANES) {
            let point = |p: usize| &m[(p * s.cout + co) * n + q..][..LANES];
            // A^T m: two rows of four.
            let (mut upper, mut lower) = ([[0.0f32; LANES]; 4], [[0.0f32; LANES]; 4]);
            for (j, (upper, lower)) in upper.iter_mut().zip(&mut lower).enumerate() {
                let (m0, m1, m2, m3) = (point(j), point(4 + j), point(8 + j), point(12 + j));
                for k in 0..LANES {
                    upper[k] = m0[k] + m1[k] + m2[k];
                    lower[k] = m1[k] - m2[k] - m3[k];
                }
            }
            // Times A: each row's left and right output.
            let finish = |v: f32| if act == Activation::Relu { relu(v) } else { v };
            for (r, z) in [upper, lower].iter().enumerate() {
                let (left, right) = corners[2 * r * n..][..2 * n].split_at_mut(n);
                for k in 0..LANES {
                    left[q + k] = finish(z[0][k] + z[1][k] + z[2][k] + bias);
                    right[q + k] = finish(z[1][k] - z[2][k] - z[3][k] + bias);
                }
            }
        }
        let pairs = s.ow / 2;
        for r in 0..block.rows {
            for dy in 0..2 {
                let oy = 2 * (block.first + r) + dy;
                if oy >= s.oh {
                    break;
                }
                let (left, right) = (&corners[2 * dy * n + r * half..], &corners[(2 * dy + 1) * n + r * half..]);
                let (even, odd_tail) = plane[oy * s.ow..][..s.ow].split_at_mut(2 * pairs);
                // Indexed rather than by pairs of the row: the compiler then interleaves whole
                // vectors of left and right columns with shuffles.
                let (l, rt) = (&left[..pairs], &right[..pairs]);
                for i in 0..pairs {
                    even[2 * i] = l[i];
                    even[2 * i + 1] = rt[i];
                }
                // An odd width cuts the last tile's right column.
                if let [last] = odd_tail {
                    *last = left[pairs];
                }
            }
        }
    }
}
}
