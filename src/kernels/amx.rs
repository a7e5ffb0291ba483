//! bf16 matrix products on AMX tiles (Intel Xeon since Sapphire Rapids), one of the two
//! routes of [`super::bf16`], whose layouts they share. One `tdpbf16ps` multiplies a 16x32
//! tile of bf16 by a 32x16 one into 16x16 f32 sums.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly; Linux
//! gives a process the tiles' register state only once it asks (`arch_prctl`), which
//! [`available`] does.

use super::bf16::{DEPTH, TILE};
use std::arch::asm;
use std::sync::OnceLock;

/// Whether this CPU and OS let mien use AMX's bf16 tiles (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // arch_prctl's request for permission to use a dynamically enabled state component, and
    // the component of the tiles' data (Linux's uapi/asm/prctl.h and the XSAVE numbering).
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels without it.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
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

/// [`super::bf16::gemm_shifted`] on tiles: blocks of 32 x 32 sums (16-wide at the edges) over
/// the whole depth. The caller has checked [`available`], the shape and the lengths.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_shifted(m: usize, n: usize, k: usize, shifts: &[usize], a: &[u16], b: &[u16], width: usize, c: &mut [f32], ldc: usize) {
    assert!(available(), "amx::gemm_shifted: no tiles here");
    let depth_a = k * shifts.len();
    let (a_stride, b_stride, c_stride) = (2 * depth_a, 4 * width, 4 * ldc);
    let config = TileConfig::all_full();
    // SAFETY: `available` checked the CPU and got the OS's permission; every tile load and
    // store below stays inside the slices by the caller's checks (rows i..i + 16 < m of A and C,
    // pair rows below k / 2 and columns j + shift .. j + shift + 16 within B's width).
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
