//! The CPU forward pass of 3x3 convolutions by Winograd's minimal filtering (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), in two sizes: F(2x2, 3x3) and
//! F(4x4, 3x3).
//!
//! Each m x m block of outputs (a tile) is computed from the (m + 2) x (m + 2) block of input
//! around it. Written as matrices, the convolution becomes one product for each point of the
//! (m + 2) x (m + 2) transform domain: `M[p] = U[p] V[p]`, where U holds the weights
//! transformed (`G g G^T`, [cout, cin] per point) and V the input tiles transformed (`B^T d B`,
//! [cin, tiles] per point). F(2x2, 3x3) does 16 multiplications per tile and channel pair where
//! direct convolution does 36 (4/9 of im2col's multiply-adds), F(4x4, 3x3) 36 where direct
//! does 144 (1/4), with transforms that cost additions and a few multiplications by constants.
//! F(2x2, 3x3)'s constants are 1 and 1/2, so its results differ from im2col's by rounding alone;
//! F(4x4, 3x3)'s (up to 5 in B, 1/24 in G, 8 in A) lose about one more decimal digit, as in
//! every library that uses it (tested against naive loops in tests/cpu_oracle.rs).
//!
//! It pays off when the products are neither thin nor mostly spare tiles: from
//! [`MIN_CHANNELS`] input channels, on planes large enough (see [`tiling`]), whole images per
//! thread. A layer's data gradient is such a convolution too (`conv2d::backward_data_cpu`).
//! conv2d's im2col path keeps everything else: other kernel sizes, a first layer of one
//! channel, batch 1, small planes, and the filter gradient. The GPU convolves directly.

use super::conv2d::{Activation, Conv2dShape};
use super::{relu::relu, sgemm, widest_vectors, with_col_scratch, MatRef};
use rayon::prelude::*;

/// Input channels below which the products of depth `cin` do worse than im2col's one of depth
/// `9 cin`: the products' fixed costs outweigh the multiply-adds saved.
pub const MIN_CHANNELS: usize = 16;

/// Bytes a block of tiles may take in transformed input and products together: a core's L2
/// cache on current x86 server parts, so that the transforms write what the products read, and
/// the products what the output transform reads, without a trip to memory. Half of it split
/// VGG's 20x20 planes of 128 channels into two blocks, whose tiles rounded up to whole vectors
/// cost F(4x4, 3x3) a third more products (BENCHMARKS.md).
const BLOCK_BYTES: usize = 2 << 20;

/// Tiles the transforms take at once: one vector register's worth (AVX-512) for each of the
/// values they combine.
const LANES: usize = 16;

/// Values over the lanes: one vector register.
type Lanes = [f32; LANES];

/// The widest tile's inputs a side (F(4x4, 3x3)'s 6): the size of the arrays the transforms
/// pass between their two halves, of which a smaller tile uses the first [`Tiling::side`].
const MAX_SIDE: usize = 6;

/// One of Winograd's algorithms F(m x m, 3x3): its tile size and its three transforms, each a
/// product of a small constant matrix with a column of values, written out term by term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// F(2x2, 3x3): 2x2 outputs from 4x4 inputs, 16 products.
    F2,
    /// F(4x4, 3x3): 4x4 outputs from 6x6 inputs, 36 products.
    F4,
}

impl Tiling {
    /// Outputs a tile side (m).
    pub const fn outputs(self) -> usize {
        match self {
            Tiling::F2 => 2,
            Tiling::F4 => 4,
        }
    }
    /// Inputs a tile side (m + 2): the transform domain is `side` x `side` points.
    const fn side(self) -> usize {
        self.outputs() + 2
    }
    const fn points(self) -> usize {
        self.side() * self.side()
    }

    /// G g for one column of a 3x3 kernel: `side` values.
    #[inline(always)]
    fn weight(self, [a, b, c]: [f32; 3]) -> [f32; MAX_SIDE] {
        match self {
            // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
            Tiling::F2 => [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c, 0.0, 0.0],
            // G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
            //      [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]
            Tiling::F4 => {
                let (even, odd) = (a + c, b);
                let (even4, odd2) = (a / 24.0 + c / 6.0, b / 12.0);
                [a / 4.0, -(even + odd) / 6.0, -(even - odd) / 6.0, even4 + odd2, even4 - odd2, c]
            }
        }
    }

    /// B^T d for one column of `side` inputs, over the lanes.
    #[inline(always)]
    fn input(self, d: &[Lanes; MAX_SIDE]) -> [Lanes; MAX_SIDE] {
        let mut o = [[0.0; LANES]; MAX_SIDE];
        match self {
            // B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
            Tiling::F2 => {
                for k in 0..LANES {
                    o[0][k] = d[0][k] - d[2][k];
                    o[1][k] = d[1][k] + d[2][k];
                    o[2][k] = d[2][k] - d[1][k];
                    o[3][k] = d[1][k] - d[3][k];
                }
            }
            // B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
            //        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
            Tiling::F4 => {
                for k in 0..LANES {
                    let (d0, d1, d2, d3, d4, d5) = (d[0][k], d[1][k], d[2][k], d[3][k], d[4][k], d[5][k]);
                    let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
                    let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
                    o[0][k] = 4.0 * d0 - 5.0 * d2 + d4;
                    o[1][k] = a + b;
                    o[2][k] = a - b;
                    o[3][k] = c + e;
                    o[4][k] = c - e;
                    o[5][k] = 4.0 * d1 - 5.0 * d3 + d5;
                }
            }
        }
        o
    }

    /// A^T m for one column of `side` points: the tile's `outputs` values, over the lanes.
    #[inline(always)]
    fn output(self, m: &[Lanes; MAX_SIDE]) -> [Lanes; 4] {
        let mut o = [[0.0; LANES]; 4];
        match self {
            // A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
            Tiling::F2 => {
                for k in 0..LANES {
                    o[0][k] = m[0][k] + m[1][k] + m[2][k];
                    o[1][k] = m[1][k] - m[2][k] - m[3][k];
                }
            }
            // A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
            //        [0, 1, -1, 8, -8, 1]]
            Tiling::F4 => {
                for k in 0..LANES {
                    let (sum12, dif12) = (m[1][k] + m[2][k], m[1][k] - m[2][k]);
                    let (sum34, dif34) = (m[3][k] + m[4][k], m[3][k] - m[4][k]);
                    o[0][k] = m[0][k] + sum12 + sum34;
                    o[1][k] = dif12 + 2.0 * dif34;
                    o[2][k] = sum12 + 4.0 * sum34;
                    o[3][k] = dif12 + 8.0 * dif34 + m[5][k];
                }
            }
        }
        o
    }
}

/// The tiling [`forward`] computes this convolution with, if any: for a 3x3 kernel and
/// [`MIN_CHANNELS`] or more, the tiling with the fewer multiply-adds in its products (spare
/// tiles included), if those are at most 2/3 of im2col's. Above that the transforms cost more
/// than the products save: F(2x2, 3x3) on an 8x8 output (16 tiles, numbered as 20 and rounded
/// up to 32) is slower than im2col, on a 10x10 one (25 tiles, numbered as 30, rounded up to 32)
/// faster (BENCHMARKS.md). F(4x4, 3x3) has the fewer products from 11x11 outputs on (and is
/// faster on 20x20 and larger); on 10x10 its 9 tiles, numbered as 12 and rounded up to 16, do
/// more than F(2x2, 3x3)'s 32, and it is slower there.
pub fn tiling(s: &Conv2dShape) -> Option<Tiling> {
    if (s.kh, s.kw) != (3, 3) || s.cin < MIN_CHANNELS {
        return None;
    }
    let products = |t: Tiling| t.points() * Plan::of(s, t).columns();
    let best = [Tiling::F2, Tiling::F4].into_iter().min_by_key(|&t| products(t))?;
    (3 * products(best) <= 2 * 9 * s.oh * s.ow).then_some(best)
}

/// Whether [`forward`] computes this convolution (see [`tiling`]).
pub fn applies(s: &Conv2dShape) -> bool {
    tiling(s).is_some()
}

/// `y = act(conv(x, w) + b)` for a shape that [`applies`], images in parallel, each image a
/// block of tile rows at a time; `u` is the weights' transform ([`transform_weights`]).
pub fn forward(s: &Conv2dShape, x: &[f32], u: &[f32], b: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let tiling = tiling(s).expect("forward is called for shapes that Winograd applies to");
    let (points, tile) = (tiling.points(), tiling.outputs());
    let plan = Plan::of(s, tiling);
    let widest = plan.block(0);
    let (v_len, m_len) = (points * s.cin * widest.n, points * s.cout * widest.n);
    let scratch_len = v_len + m_len + (tile * tile * widest.phase_len() + tile * plan.half).max(tile * tile * widest.n);
    let pairs = s.cout * s.cin;
    let (in_img, out_img) = (s.cin * s.h * s.w, s.cout * s.oh * s.ow);
    y.par_chunks_mut(out_img).zip(x.par_chunks(in_img)).for_each(|(out, img)| {
        with_col_scratch(scratch_len, |scratch| {
            let (v, rest) = scratch.split_at_mut(v_len);
            let (m, rows) = rest.split_at_mut(m_len);
            for block in plan.blocks() {
                let n = block.n;
                let (v, m) = (&mut v[..points * s.cin * n], &mut m[..points * s.cout * n]);
                transform_input(s, tiling, &block, img, v, rows);
                for p in 0..points {
                    let (vp, mp) = (&v[p * s.cin * n..][..s.cin * n], &mut m[p * s.cout * n..][..s.cout * n]);
                    sgemm(s.cout, n, s.cin, MatRef::rows(&u[p * pairs..][..pairs], s.cin), MatRef::rows(vp, n), mp, false, 1);
                }
                transform_output(s, tiling, &block, m, b, act, out, rows);
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
    fn of(s: &Conv2dShape, tiling: Tiling) -> Plan {
        let tile = tiling.outputs();
        let (tile_rows, half) = (s.oh.div_ceil(tile), s.ow.div_ceil(tile) + 1);
        let block_tiles = BLOCK_BYTES / (4 * tiling.points() * (s.cin + s.cout));
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

/// Tile rows `first..first + rows` of an image. With m outputs a tile side, tile (r, t) covers
/// outputs m r..m r + m by m t..m t + m and reads inputs m r..m r + m + 2 by m t..m t + m + 2
/// (before padding). The tiles are numbered `r * half + t` with `half` = tiles a row + 1: the
/// one spare tile a row (computed and thrown away) lets every transform run over the block's
/// tiles as one contiguous range, whose inputs are then contiguous too (see
/// [`transform_input`]).
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
    /// Values in each of the m x m phases of the block's input: its rows and columns split by
    /// their remainder modulo m, `half` columns for each of `rows + 1` groups of m rows, and
    /// room for the reads of the last lanes' tiles, which reach one row group and one column
    /// further.
    fn phase_len(&self) -> usize {
        self.n + self.half + 1
    }
}

/// Kernels a task of [`transform_weights`] transforms.
const KERNELS_PER_TASK: usize = 4096;

/// The weights [cout, cin, 3, 3] of a shape that [`applies`] as U [points][cout][cin]:
/// `G g G^T` for each 3x3 kernel g. Shared among the threads: 16/9 or 4 times as many values
/// as the weights are written (4 MB for VGG's widest layer), which on one thread leaves the
/// others idle.
pub fn transform_weights(s: &Conv2dShape, w: &[f32]) -> Vec<f32> {
    let tiling = tiling(s).expect("transform_weights is called for shapes that Winograd applies to");
    let side = tiling.side();
    let pairs = s.cout * s.cin;
    let mut u = vec![0.0; tiling.points() * pairs];
    // Task t takes kernels t * KERNELS_PER_TASK.. and the same run of each point's plane.
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..pairs.div_ceil(KERNELS_PER_TASK)).map(|_| Vec::with_capacity(tiling.points())).collect();
    for plane in u.chunks_mut(pairs) {
        for (task, part) in tasks.iter_mut().zip(plane.chunks_mut(KERNELS_PER_TASK)) {
            task.push(part);
        }
    }
    tasks.into_par_iter().zip(w.par_chunks(9 * KERNELS_PER_TASK)).for_each(|(mut points, kernels)| {
        for (k, kernel) in kernels.chunks_exact(9).enumerate() {
            // G g, column by column: [3][side].
            let columns = [0, 1, 2].map(|c| tiling.weight([kernel[c], kernel[3 + c], kernel[6 + c]]));
            for i in 0..side {
                // Row i of (G g) G^T.
                let row = tiling.weight([columns[0][i], columns[1][i], columns[2][i]]);
                for (j, &value) in row[..side].iter().enumerate() {
                    points[side * i + j][k] = value;
                }
            }
        }
    });
    u
}

widest_vectors! {
/// The block's tiles transformed (`B^T d B`) into V [points][cin][block.n].
///
/// Each channel's input rows of the block are first split into m x m phases by the remainders
/// of row and column modulo m: phase (a, b)[r * half + k] = input(m r + a, m k + b). Tile
/// q = r * half + t then reads input (m r + i, m t + j) = phase (i % m, j % m)[q + (i / m) *
/// half + j / m]: each of its values, for consecutive tiles, is consecutive in one phase.
fn transform_input(s: &Conv2dShape, tiling: Tiling, block: &Block, img: &[f32], v: &mut [f32], scratch: &mut [f32]) {
    let (tile, side) = (tiling.outputs(), tiling.side());
    let (n, half, len) = (block.n, block.half, block.phase_len());
    let (phases, padded) = scratch[..tile * tile * len + tile * half].split_at_mut(tile * tile * len);
    // Past the block's row groups: read by the last lanes only, for tiles thrown away.
    let groups_end = (block.rows + 1) * half;
    phases.chunks_exact_mut(len).for_each(|phase| phase[groups_end..].fill(0.0));
    let (lo, hi) = (s.pad_left.min(tile * half), (s.pad_left + s.w).min(tile * half));
    padded.fill(0.0);
    for (ci, plane) in img.chunks_exact(s.h * s.w).enumerate() {
        for row in 0..tile * (block.rows + 1) {
            let iy = (tile * block.first + row).wrapping_sub(s.pad_top);
            let at = (row / tile) * half;
            // Phases (row % m, 0..m): consecutive, len values each.
            let row_phases = &mut phases[(row % tile) * tile * len..][..tile * len];
            if iy >= s.h {
                row_phases.chunks_exact_mut(len).for_each(|phase| phase[at..at + half].fill(0.0));
                continue;
            }
            // The row with its padding (outside lo..hi, zero throughout), then split into its
            // columns' phases.
            padded[lo..hi].copy_from_slice(&plane[iy * s.w..][..hi - lo]);
            // Each phase a slice of its own, written in one pass: the compiler then splits
            // whole vectors of the row with shuffles.
            match tiling {
                Tiling::F2 => {
                    let (even, odd) = row_phases.split_at_mut(len);
                    for ((pair, e), o) in padded.chunks_exact(2).zip(&mut even[at..at + half]).zip(&mut odd[at..at + half]) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                }
                Tiling::F4 => {
                    let (p01, p23) = row_phases.split_at_mut(2 * len);
                    let ((p0, p1), (p2, p3)) = (p01.split_at_mut(len), p23.split_at_mut(len));
                    let (p0, p1, p2, p3) = (&mut p0[at..at + half], &mut p1[at..at + half], &mut p2[at..at + half], &mut p3[at..at + half]);
                    let groups = &padded[..4 * half];
                    for k in 0..half {
                        (p0[k], p1[k], p2[k], p3[k]) = (groups[4 * k], groups[4 * k + 1], groups[4 * k + 2], groups[4 * k + 3]);
                    }
                }
            }
        }
        for q in (0..n).step_by(LANES) {
            // B^T d, column by column: t[i][j] over the lanes.
            let mut t = [[[0.0f32; LANES]; MAX_SIDE]; MAX_SIDE];
            for j in 0..side {
                let column: [Lanes; MAX_SIDE] = std::array::from_fn(|i| {
                    if i < side {
                        phases[((i % tile) * tile + j % tile) * len + q + (i / tile) * half + j / tile..][..LANES].try_into().expect("LANES values")
                    } else {
                        [0.0; LANES]
                    }
                });
                for (i, values) in tiling.input(&column)[..side].iter().enumerate() {
                    t[i][j] = *values;
                }
            }
            // Then times B, and out to point side * i + j.
            for (i, t) in t[..side].iter().enumerate() {
                for (j, values) in tiling.input(t)[..side].iter().enumerate() {
                    v[((side * i + j) * s.cin + ci) * n + q..][..LANES].copy_from_slice(values);
                }
            }
        }
    }
}
}

widest_vectors! {
/// The block's outputs from its products M [points][cout][block.n]: `A^T m A`, plus the bias,
/// through `act`, computed for the block's tiles over the lanes and then laid out m columns a
/// tile into the output rows.
fn transform_output(s: &Conv2dShape, tiling: Tiling, block: &Block, m: &[f32], b: Option<&[f32]>, act: Activation, out: &mut [f32], scratch: &mut [f32]) {
    let (tile, side) = (tiling.outputs(), tiling.side());
    let (n, half) = (block.n, block.half);
    // The tiles' outputs (row dy, column dx) at (tile * dy + dx) * n, n of each.
    let outputs = &mut scratch[..tile * tile * n];
    let finish = |v: f32| if act == Activation::Relu { relu(v) } else { v };
    for (co, plane) in out.chunks_exact_mut(s.oh * s.ow).enumerate() {
        let bias = b.map_or(0.0, |b| b[co]);
        for q in (0..n).step_by(LANES) {
            // A^T m, column by column: rows[dy][j] over the lanes.
            let mut rows = [[[0.0f32; LANES]; MAX_SIDE]; 4];
            for j in 0..side {
                let column: [Lanes; MAX_SIDE] = std::array::from_fn(|i| if i < side { m[((side * i + j) * s.cout + co) * n + q..][..LANES].try_into().expect("LANES values") } else { [0.0; LANES] });
                for (dy, values) in tiling.output(&column)[..tile].iter().enumerate() {
                    rows[dy][j] = *values;
                }
            }
            // Times A: each row's outputs.
            for (dy, row) in rows[..tile].iter().enumerate() {
                for (dx, values) in tiling.output(row)[..tile].iter().enumerate() {
                    let dest = &mut outputs[(tile * dy + dx) * n + q..][..LANES];
                    for k in 0..LANES {
                        dest[k] = finish(values[k] + bias);
                    }
                }
            }
        }
        let whole = s.ow / tile;
        for r in 0..block.rows {
            for dy in 0..tile {
                let oy = tile * (block.first + r) + dy;
                if oy >= s.oh {
                    break;
                }
                let column = |dx: usize| &outputs[(tile * dy + dx) * n + r * half..][..whole + 1];
                let (full, tail) = plane[oy * s.ow..][..s.ow].split_at_mut(tile * whole);
                // Indexed rather than by groups of the row or with strides: the compiler then
                // interleaves whole vectors of the columns with shuffles.
                match tiling {
                    Tiling::F2 => {
                        let (l, rt) = (&column(0)[..whole], &column(1)[..whole]);
                        for i in 0..whole {
                            full[2 * i] = l[i];
                            full[2 * i + 1] = rt[i];
                        }
                    }
                    Tiling::F4 => {
                        let (c0, c1, c2, c3) = (&column(0)[..whole], &column(1)[..whole], &column(2)[..whole], &column(3)[..whole]);
                        let full = &mut full[..4 * whole];
                        for i in 0..whole {
                            (full[4 * i], full[4 * i + 1], full[4 * i + 2], full[4 * i + 3]) = (c0[i], c1[i], c2[i], c3[i]);
                        }
                    }
                }
                // A width that is not a multiple of m cuts the last tile's right columns.
                for (dx, dst) in tail.iter_mut().enumerate() {
                    *dst = column(dx)[whole];
                }
            }
        }
    }
}
}
