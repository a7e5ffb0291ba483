//! Shared test helpers: the GPU context, seeded random data, tolerant comparison, and naive
//! loops that serve as the oracle for the fast CPU kernels.
#![allow(dead_code)]

use mien::gpu::{BackendChoice, Gpu, GpuOptions};
use std::sync::OnceLock;

/// The backend the GPU tests run on: `MIEN_TEST_BACKEND=vulkan|gl|...`, default auto.
fn backend() -> BackendChoice {
    match std::env::var("MIEN_TEST_BACKEND").unwrap_or_default().as_str() {
        "vulkan" => BackendChoice::Vulkan,
        "gl" => BackendChoice::Gl,
        "metal" => BackendChoice::Metal,
        "dx12" => BackendChoice::Dx12,
        _ => BackendChoice::Auto,
    }
}

pub fn open(binding_limit_override: Option<u64>, gpu_tiles: bool) -> Gpu {
    let options = GpuOptions { backend: backend(), adapter: std::env::var("MIEN_TEST_ADAPTER").ok(), binding_limit_override, gpu_tiles };
    // A missing adapter fails the test, never skips it: on a machine without a GPU the test
    // command installs lavapipe, so no adapter means the set-up is broken.
    let gpu = Gpu::new(&options).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    eprintln!("GPU tests on {}", gpu.describe());
    gpu
}

/// The adapter's context, opened once per test binary.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open(None, false))
}

/// A context whose storage bindings are at most 8 MiB: one pyramid level of a test photo fits,
/// all of them don't, so the GPU detector splits a frame's levels into several batches.
pub fn mid_binding_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open(Some(8 << 20), false))
}

/// A context that runs the kernel tiles meant for real GPUs even on lavapipe, whose own (CPU
/// adapter) tiles are wider: the tests cover both.
pub fn gpu_with_gpu_tiles() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open(None, true))
}

/// A context that pretends storage bindings are at most 4 KiB, to exercise chunked dispatch.
pub fn small_binding_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open(Some(4096), false))
}

/// Seeded uniform values in [lo, hi) (SplitMix64).
pub fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) ^ 0xD1B54A32D192ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

pub fn randn_like(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed, -1.0, 1.0)
}

/// Element-wise comparison: |got - want| <= abs + rel * |want|, where `abs` is `rel` times the
/// largest |want| so that values near zero inside a large sum aren't held to an impossible bound.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = approx::relative_eq!(g, w, epsilon = rel * scale, max_relative = rel);
        assert!(ok, "{what}: element {i} of {}: got {g}, want {w} (relative tolerance {rel}, scale {scale})", got.len());
    }
}

pub fn read(buf: &mien::gpu::GpuBuffer<f32>) -> Vec<f32> {
    gpu().read(buf).unwrap()
}

/// Direct convolution: the oracle for the im2col + gemm CPU kernel.
pub fn naive_conv(s: &mien::kernels::conv2d::Conv2dShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; s.output_len()];
    for n in 0..s.batch {
        for co in 0..s.cout {
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut acc = b[co] as f64;
                    for ci in 0..s.cin {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let iy = (oy + ky) as isize - s.pad_top as isize;
                                let ix = (ox + kx) as isize - s.pad_left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                    let xv = x[((n * s.cin + ci) * s.h + iy as usize) * s.w + ix as usize];
                                    acc += (xv * w[((co * s.cin + ci) * s.kh + ky) * s.kw + kx]) as f64;
                                }
                            }
                        }
                    }
                    y[((n * s.cout + co) * s.oh + oy) * s.ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// `c = a b` for row-major a [m, k] and b [k, n], with f64 sums.
pub fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|t| a[i * k + t] as f64 * b[t * n + j] as f64).sum::<f64>() as f32;
        }
    }
    c
}

pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The `mien` binary with `args`, run from the source tree as a user there would.
pub fn mien_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mien"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env("XDG_RUNTIME_DIR", std::env::temp_dir());
    command
}

/// Runs `mien` with `args` to its end: (success, stdout, stderr).
pub fn mien(args: &[&str]) -> (bool, String, String) {
    let out = mien_command(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A path as a command-line argument (the tests' paths are UTF-8).
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh, empty folder under the system's temp dir, named for the test and this process.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mien-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A uniform grey `side` x `side` image, in the format `path`'s extension names.
pub fn write_grey_image(path: &std::path::Path, side: u32) {
    image::GrayImage::from_pixel(side, side, image::Luma([90])).save(path).unwrap();
}
