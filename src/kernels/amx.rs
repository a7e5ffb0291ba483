//! Matrix products on AMX tiles in bfloat16, for inference on the CPUs that have them (Intel
//! Xeon since Sapphire Rapids). One `tdpbf16ps` multiplies a 16x32 tile of bf16 by a 32x16
//! one into 16x16 f32 sums: several times the products a core makes in f32 with AVX-512, at
//! bf16's 8-bit mantissa for the factors (the sums stay f32).
//!
//! Layouts, as the tile loads read them: the left matrix A (m x k) as bf16 rows; the right
//! one B (k x n) with each pair of rows interleaved, element by element (`[k / 2][n][2]`); the
//! product C (m x n) as f32 rows. m and n are multiples of 16 and k of 32 ([`fits`]); other
//! shapes stay on the f32 route.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly; Linux
//! gives a process the tiles' register state only once it asks (`arch_prctl`), which
//! [`available`] does.

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of a tile, and f32 columns of a sum tile.
const TILE: usize = 16;
/// bf16 columns of a factor tile: the depth one instruction sums over.
const DEPTH: usize = 32;

/// Whether this CPU and OS let mien use AMX's bf16 tiles and AVX-512's bf16 conversions
/// (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // arch_prctl's request for permission to use a dynamically enabled state component, and
    // the component of the tiles' data (Linux's uapi/asm/prctl.h and the XSAVE numbering).
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile && std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512bw")) {
        return false;
    }
    // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels without it.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether an m x k by k x n product runs on tiles.
pub fn fits(m: usize, n: usize, k: usize) -> bool {
    m > 0 && n > 0 && k > 0 && m.is_multiple_of(TILE) && n.is_multiple_of(TILE) && k.is_multiple_of(DEPTH)
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits.
pub fn bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let bits = x.to_bits();
    ((bits + 0x7FFF + (bits >> 16 & 1)) >> 16) as u16
}

/// The value of the bf16 `bits`.
pub fn f32_of(bits: u16) -> f32 {
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
            // SAFETY: `available` saw AVX-512 BW and BF16; the slices hold `n` and `2n` values.
            unsafe { interleave_avx512(first, &second[..n], &mut out[..2 * n]) };
            return;
        }
    }
    for j in 0..n {
        out[2 * j] = bf16(first[j]);
        out[2 * j + 1] = second.map_or(0, |s| bf16(s[j]));
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

/// The tile configuration: palette 1, eight tiles of 16 rows of 64 bytes (tmm0-3 the sums,
/// tmm4-5 A's, tmm6-7 B's).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn all_full() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < 8 {
            bytes[16 + 2 * t] = 64;
            bytes[48 + t] = TILE as u8;
            t += 1;
        }
        TileConfig(bytes)
    }
}

/// C (m x n, rows `ldc` apart) = A (m x k, bf16 rows) times B (k x n, interleaved pairs), on
/// tiles: blocks of 32 x 32 sums (16-wide at the edges) over the whole depth. Call only when
/// [`available`] and [`fits`].
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
    assert!(available() && fits(m, n, k), "amx::gemm: {m} x {k} x {n} does not run on tiles here");
    let depth_a = k * shifts.len();
    let widest = n + shifts.iter().max().copied().unwrap_or(0);
    assert!(widest <= width && a.len() >= m * depth_a && b.len() >= (k / 2 - 1) * 2 * width + 2 * widest && ldc >= n && c.len() >= (m - 1) * ldc + n, "amx::gemm: operands too short");
    let (a_stride, b_stride, c_stride) = (2 * depth_a, 4 * width, 4 * ldc);
    let config = TileConfig::all_full();
    // SAFETY: `available` checked the CPU and got the OS's permission; every tile load and
    // store below stays inside the slices by the asserts above (rows i..i + 16 < m of A and C,
    // pair rows below k / 2 and columns j + shift .. j + shift + 16 <= widest of B).
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        for i in (0..m).step_by(2 * TILE) {
            let two_rows = i + TILE < m;
            for j in (0..n).step_by(2 * TILE) {
                let two_columns = j + TILE < n;
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for (t, &shift) in shifts.iter().enumerate() {
                    for depth in (0..k).step_by(DEPTH) {
                        let a0 = a.as_ptr().add(i * depth_a + t * k + depth);
                        let b0 = b.as_ptr().add(depth * width + 2 * (j + shift));
                        asm!("tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm6, [{b} + {t}*1]", "tdpbf16ps tmm0, tmm4, tmm6",
                            a = in(reg) a0, s = in(reg) a_stride, b = in(reg) b0, t = in(reg) b_stride, options(nostack, readonly));
                        if two_columns {
                            asm!("tileloadd tmm7, [{b} + {t}*1]", "tdpbf16ps tmm1, tmm4, tmm7", b = in(reg) b0.add(2 * TILE), t = in(reg) b_stride, options(nostack, readonly));
                        }
                        if two_rows {
                            asm!("tileloadd tmm5, [{a} + {s}*1]", "tdpbf16ps tmm2, tmm5, tmm6", a = in(reg) a0.add(TILE * depth_a), s = in(reg) a_stride, options(nostack, readonly));
                            if two_columns {
                                asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                            }
                        }
                    }
                }
                let c0 = c.as_mut_ptr().add(i * ldc + j);
                asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c0, s = in(reg) c_stride, options(nostack));
                if two_columns {
                    asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) c0.add(TILE), s = in(reg) c_stride, options(nostack));
                }
                if two_rows {
                    asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) c0.add(TILE * ldc), s = in(reg) c_stride, options(nostack));
                    if two_columns {
                        asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) c0.add(TILE * ldc + TILE), s = in(reg) c_stride, options(nostack));
                    }
                }
            }
        }
        // Hands the tile state back, so that the OS need not save it at every switch.
        asm!("tilerelease", options(nostack, nomem));
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
        assert_eq!(bf16(1.0), 0x3F80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa, 1.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(f32_of(bf16(-2.5)), -2.5);
        assert!(f32_of(bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn pairs_interleave_two_rows_and_pad_an_odd_last_one() {
        for (k, n) in [(1, 3), (4, 16), (5, 37), (32, 64)] {
            let rows = random(k * n, (k * n) as u64);
            let mut out = vec![1; k.div_ceil(2) * n * 2];
            pack_pairs(&rows, k, n, &mut out);
            for p in 0..k.div_ceil(2) {
                for j in 0..n {
                    let second = if 2 * p + 1 < k { bf16(rows[(2 * p + 1) * n + j]) } else { 0 };
                    assert_eq!((out[(p * n + j) * 2], out[(p * n + j) * 2 + 1]), (bf16(rows[2 * p * n + j]), second), "{k} x {n}, pair {p}, column {j}");
                }
            }
        }
    }

    #[test]
    fn tile_products_match_f64_products_of_the_rounded_factors() {
        if !available() {
            eprintln!("no AMX bf16 tiles on this machine: the tile products are not tested here");
            return;
        }
        // Edges of one and two tiles each way, one depth step and several, a wider C; then
        // shifted columns of a wider B, summed over several shifts.
        let plain = [(16, 16, 32, 16), (48, 80, 64, 80), (64, 112, 128, 120), (256, 16, 256, 16), (32, 32, 288, 40)].map(|(m, n, k, ldc)| (m, n, k, ldc, vec![0], n));
        let shifted = [(32, 48, 64, 48, vec![0, 1, 2, 19, 20, 21], 70), (16, 16, 32, 16, vec![5], 21), (48, 32, 96, 40, vec![3, 0, 33], 80)];
        for (m, n, k, ldc, shifts, width) in plain.into_iter().chain(shifted) {
            let (a, b) = (random(m * k * shifts.len(), 1), random(k * width, 2));
            let a16: Vec<u16> = a.iter().map(|&v| bf16(v)).collect();
            let mut b16 = vec![0; k * width];
            pack_pairs(&b, k, width, &mut b16);
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            gemm_shifted(m, n, k, &shifts, &a16, &b16, width, &mut c, ldc);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut size) = (0.0, 0.0);
                    for (t, shift) in shifts.iter().enumerate() {
                        for d in 0..k {
                            let term = f32_of(a16[i * k * shifts.len() + t * k + d]) as f64 * f32_of(bf16(b[d * width + j + shift])) as f64;
                            (want, size) = (want + term, size + term.abs());
                        }
                    }
                    let got = c[i * ldc + j] as f64;
                    assert!((got - want).abs() <= 1e-6 * size.max(1.0) * k as f64, "{m} x {n} x {k}, shifts {shifts:?}: C[{i}][{j}] {got} against {want}");
                }
            }
        }
    }
}
