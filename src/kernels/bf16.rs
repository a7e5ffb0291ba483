//! bf16 matrix products for inference: factors rounded to bfloat16 (8 bits of mantissa),
//! sums kept in f32. Two routes share one layout and one entry, [`gemm_shifted`]:
//! - AMX tiles (Intel Xeon since Sapphire Rapids, [`super::amx`]): one `tdpbf16ps` makes
//!   16x16x32 products;
//! - AVX-512 BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake and later): one
//!   `vdpbf16ps` adds the products of 16 pairs of bf16 to 16 f32 sums, twice the products of
//!   an f32 fused multiply-add of the same width, and half its bytes to load.
//!
//! Layouts: the left matrix A (m x k) as bf16 rows; the right one B (k x n) with each pair of
//! rows interleaved, element by element (`[k / 2][n][2]`), which is how both instructions read
//! their right factor; the product C (m x n) as f32 rows. m and n are multiples of 16 and k of
//! 32 ([`fits`]), a tile's sizes; other shapes stay on the f32 route.

use std::sync::OnceLock;

/// Rows of a tile, f32 columns of a sum tile, and f32 lanes of an AVX-512 vector.
pub(super) const TILE: usize = 16;
/// bf16 columns of a factor tile: the depth one tile instruction sums over.
pub(super) const DEPTH: usize = 32;
/// Rows of A (and C) one dot-product block keeps in registers.
const DOT_ROWS: usize = 8;
/// Vectors of 16 columns of C each row of a dot-product block keeps: 8 x 3 sums, 3 of B and
/// a broadcast of A stay within AVX-512's 32 registers.
const DOT_VECTORS: usize = 3;

/// How this CPU makes bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Tiles,
    DotProducts,
}

/// The route this CPU and OS give, if any (asked once).
pub fn route() -> Option<Route> {
    static ROUTE: OnceLock<Option<Route>> = OnceLock::new();
    *ROUTE.get_or_init(|| {
        // Both routes convert with AVX-512 BF16's instructions ([`interleave`]).
        let converts = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512bf16");
        if !converts {
            None
        } else if super::amx::available() {
            Some(Route::Tiles)
        } else {
            Some(Route::DotProducts)
        }
    })
}

/// Whether this CPU and OS make bf16 products by either route.
pub fn available() -> bool {
    route().is_some()
}

/// Whether an m x k by k x n product runs in bf16.
pub fn fits(m: usize, n: usize, k: usize) -> bool {
    m > 0 && n > 0 && k > 0 && m.is_multiple_of(TILE) && n.is_multiple_of(TILE) && k.is_multiple_of(DEPTH)
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits.
pub fn round(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let bits = x.to_bits();
    ((bits + 0x7FFF + (bits >> 16 & 1)) >> 16) as u16
}

/// The value of the bf16 `bits`.
pub fn value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `rows` (k x n, f32) as the right factor's layout: row pairs interleaved, an odd last row
/// paired with zeros. `out` holds `k.div_ceil(2) * n * 2` values.
pub fn pack_pairs(rows: &[f32], k: usize, n: usize, out: &mut [u16]) {
    assert!(rows.len() >= k * n && out.len() >= k.div_ceil(2) * n * 2, "pack_pairs: {k} x {n} rows into {} values", out.len());
    for (p, pair) in out.chunks_exact_mut(2 * n).take(k.div_ceil(2)).enumerate() {
        interleave(&rows[2 * p * n..][..n], rows.get((2 * p + 1) * n..(2 * p + 2) * n), pair);
    }
}

/// `first` and `second` (zeros if none) in bf16, element by element: `out[2j]` from
/// `first[j]`, `out[2j + 1]` from `second[j]`.
pub fn interleave(first: &[f32], second: Option<&[f32]>, out: &mut [u16]) {
    let n = first.len();
    assert!(out.len() >= 2 * n && second.is_none_or(|s| s.len() >= n), "interleave: {n} values into {}", out.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(second) = second {
        if available() {
            // SAFETY: `available` saw AVX-512 F, BW and BF16; the slices hold `n` and `2n` values.
            unsafe { interleave_avx512(first, &second[..n], &mut out[..2 * n]) };
            return;
        }
    }
    for j in 0..n {
        out[2 * j] = round(first[j]);
        out[2 * j + 1] = second.map_or(0, |s| round(s[j]));
    }
}

/// bf16 of `a` and `b` interleaved into `out` (twice their length), 16 of each at a time, the
/// last fewer through masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn interleave_avx512(a: &[f32], b: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    // Lane 2j of the result takes lane j of the converted a, lane 2j + 1 lane j of b (at 16 + j).
    let order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for j in (0..a.len()).step_by(TILE) {
        let left = (a.len() - j).min(TILE);
        let (inputs, outputs) = ((1u32 << left) - 1, (1u64 << (2 * left)) - 1);
        // SAFETY: the masks keep the loads within `left` values of a and b from j, and the store
        // within 2 `left` of out from 2j; masked-off lanes touch no memory.
        unsafe {
            let (a, b) = (_mm512_maskz_loadu_ps(inputs as __mmask16, a.as_ptr().add(j)), _mm512_maskz_loadu_ps(inputs as __mmask16, b.as_ptr().add(j)));
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            _mm512_mask_storeu_epi16(out.as_mut_ptr().add(2 * j).cast(), outputs as __mmask32, _mm512_permutexvar_epi16(order, both));
        }
    }
}

/// C (m x n, rows `ldc` apart) = A (m x k, bf16 rows) times B (k x n, interleaved pairs).
/// Call only when [`available`] and [`fits`].
pub fn gemm(m: usize, n: usize, k: usize, a: &[u16], b: &[u16], c: &mut [f32], ldc: usize) {
    gemm_shifted(m, n, k, &[0], a, b, n, c, ldc);
}

/// C (m x n, rows `ldc` apart) = the sum over shifts t of A_t B_t: A_t is the t-th k columns
/// of A (m x k·shifts.len(), bf16 rows), and B_t the k x n matrix whose column j is B's column
/// `j + shifts[t]` (B: k x `width`, interleaved pairs). A convolution is this product, B an
/// image's channels laid out flat and a shift for each tap. Call only when [`available`] and
/// `fits(m, n, k)`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_shifted(m: usize, n: usize, k: usize, shifts: &[usize], a: &[u16], b: &[u16], width: usize, c: &mut [f32], ldc: usize) {
    let route = route().expect("bf16::gemm: this CPU makes no bf16 products");
    gemm_shifted_by(route, m, n, k, shifts, a, b, width, c, ldc);
}

/// [`gemm_shifted`] by `route`, which the CPU must have (AMX CPUs have both).
#[allow(clippy::too_many_arguments)]
fn gemm_shifted_by(route: Route, m: usize, n: usize, k: usize, shifts: &[usize], a: &[u16], b: &[u16], width: usize, c: &mut [f32], ldc: usize) {
    assert!(fits(m, n, k), "bf16::gemm: {m} x {k} x {n} is not a whole number of tiles");
    let widest = n + shifts.iter().max().copied().unwrap_or(0);
    assert!(widest <= width && a.len() >= m * k * shifts.len() && b.len() >= (k / 2 - 1) * 2 * width + 2 * widest && ldc >= n && c.len() >= (m - 1) * ldc + n, "bf16::gemm: operands too short");
    match route {
        Route::Tiles => super::amx::gemm_shifted(m, n, k, shifts, a, b, width, c, ldc),
        Route::DotProducts => {
            assert!(available(), "bf16::gemm: no AVX-512 BF16 here");
            // SAFETY: `available` saw AVX-512 F and BF16; the asserts above keep every access
            // in bounds.
            unsafe { gemm_shifted_dot(m, n, k, shifts, a, b, width, c, ldc) }
        }
    }
}

/// [`gemm_shifted`] with AVX-512 BF16 dot products, in blocks of 8 rows by 48 columns (fewer
/// at the right edge) whose sums stay in registers over the whole depth.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
fn gemm_shifted_dot(m: usize, n: usize, k: usize, shifts: &[usize], a: &[u16], b: &[u16], width: usize, c: &mut [f32], ldc: usize) {
    let block = DotBlock { k, depth_a: k * shifts.len(), shifts, width, ldc };
    for i in (0..m).step_by(DOT_ROWS) {
        for j in (0..n).step_by(DOT_VECTORS * TILE) {
            // SAFETY: rows i..i + 8 <= m (m is a multiple of 16) and the columns below n, as
            // the caller checked against the slices' lengths.
            unsafe {
                let (a, b, c) = (a.as_ptr().add(i * block.depth_a), b.as_ptr().add(2 * j), c.as_mut_ptr().add(i * ldc + j));
                match (n - j) / TILE {
                    1 => block.sums::<1>(a, b, c),
                    2 => block.sums::<2>(a, b, c),
                    _ => block.sums::<DOT_VECTORS>(a, b, c),
                }
            }
        }
    }
}

/// The strides one dot-product block reads and writes with.
struct DotBlock<'a> {
    k: usize,
    /// A's row length: k for each shift.
    depth_a: usize,
    shifts: &'a [usize],
    width: usize,
    ldc: usize,
}

impl DotBlock<'_> {
    /// C's 8 rows from `c`, `VECTORS` x 16 columns, from A's rows at `a` and B's columns at `b`.
    ///
    /// # Safety
    /// AVX-512 F and BF16 are present, and A's 8 rows, B's `VECTORS` x 16 columns past every
    /// shift over k / 2 pair rows, and C's block lie in their slices.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn sums<const VECTORS: usize>(&self, a: *const u16, b: *const u16, c: *mut f32) {
        use std::arch::x86_64::*;
        let mut sums = [[_mm512_setzero_ps(); VECTORS]; DOT_ROWS];
        for (t, &shift) in self.shifts.iter().enumerate() {
            for pair in 0..self.k / 2 {
                // SAFETY (all three blocks): within the slices by the function's contract.
                let b_row = unsafe { b.add(pair * 2 * self.width + 2 * shift) };
                let columns: [__m512bh; VECTORS] = std::array::from_fn(|v| unsafe { std::mem::transmute(_mm512_loadu_si512(b_row.add(2 * TILE * v).cast())) });
                for (r, row_sums) in sums.iter_mut().enumerate() {
                    // Row r's pair of A, in every lane.
                    let pair_bits = unsafe { a.add(r * self.depth_a + t * self.k + 2 * pair).cast::<i32>().read_unaligned() };
                    let pairs: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair_bits)) };
                    for (sum, &column) in row_sums.iter_mut().zip(&columns) {
                        *sum = _mm512_dpbf16_ps(*sum, pairs, column);
                    }
                }
            }
        }
        for (r, row_sums) in sums.iter().enumerate() {
            for (v, &sum) in row_sums.iter().enumerate() {
                // SAFETY: within C by the function's contract.
                unsafe { _mm512_storeu_ps(c.add(r * self.ldc + TILE * v), sum) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(round(1.0), 0x3F80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(round(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(value(round(-2.5)), -2.5);
        assert!(value(round(f32::NAN)).is_nan());
    }

    #[test]
    fn pairs_interleave_two_rows_and_pad_an_odd_last_one() {
        for (k, n) in [(1, 3), (4, 16), (5, 37), (32, 64)] {
            let rows = random(k * n, (k * n) as u64);
            let mut out = vec![1; k.div_ceil(2) * n * 2];
            pack_pairs(&rows, k, n, &mut out);
            for p in 0..k.div_ceil(2) {
                for j in 0..n {
                    let second = if 2 * p + 1 < k { round(rows[(2 * p + 1) * n + j]) } else { 0 };
                    assert_eq!((out[(p * n + j) * 2], out[(p * n + j) * 2 + 1]), (round(rows[2 * p * n + j]), second), "{k} x {n}, pair {p}, column {j}");
                }
            }
        }
    }

    #[test]
    fn both_routes_match_f64_products_of_the_rounded_factors() {
        let routes = match route() {
            None => {
                eprintln!("no bf16 products on this machine: they are not tested here");
                return;
            }
            Some(Route::Tiles) => vec![Route::Tiles, Route::DotProducts],
            Some(Route::DotProducts) => vec![Route::DotProducts],
        };
        // Edges of one and two tiles each way, one depth step and several, a wider C; then
        // shifted columns of a wider B, summed over several shifts.
        let plain = [(16, 16, 32, 16), (48, 80, 64, 80), (64, 112, 128, 120), (256, 16, 256, 16), (32, 32, 288, 40)].map(|(m, n, k, ldc)| (m, n, k, ldc, vec![0], n));
        let shifted = [(32, 48, 64, 48, vec![0, 1, 2, 19, 20, 21], 70), (16, 16, 32, 16, vec![5], 21), (48, 32, 96, 40, vec![3, 0, 33], 80)];
        for ((m, n, k, ldc, shifts, width), route) in plain.into_iter().chain(shifted).flat_map(|case| routes.iter().map(move |&r| (case.clone(), r))) {
            let (a, b) = (random(m * k * shifts.len(), 1), random(k * width, 2));
            let a16: Vec<u16> = a.iter().map(|&v| round(v)).collect();
            let mut b16 = vec![0; k * width];
            pack_pairs(&b, k, width, &mut b16);
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            gemm_shifted_by(route, m, n, k, &shifts, &a16, &b16, width, &mut c, ldc);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0.0, 0.0);
                    for (t, shift) in shifts.iter().enumerate() {
                        for d in 0..k {
                            let term = value(a16[i * k * shifts.len() + t * k + d]) as f64 * value(round(b[d * width + j + shift])) as f64;
                            (want, size) = (want + term, size + term.abs());
                        }
                    }
                    let got = c[i * ldc + j] as f64;
                    assert!((got - want).abs() <= 1e-6 * size.max(1.0) * k as f64, "{route:?}, {m} x {n} x {k}, shifts {shifts:?}: C[{i}][{j}] {got} against {want}");
                }
            }
        }
    }
}
