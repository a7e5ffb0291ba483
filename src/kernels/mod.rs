//! One file per op: its GPU dispatch (the WGSL lives in `shaders/`) and its CPU implementation
//! side by side. The CPU side is both the reference the GPU is tested against and the backend
//! that trains on machines without a GPU, so it is written for speed (matrix products through
//! the `gemm` crate, rayon over the batch); the tests keep naive loops as its own oracle.
//!
//! Layout everywhere: activations NCHW, convolution weights OIHW, dense weights [in, out].
//! NCHW because a convolution of one image is then a single matrix product
//! `W[cout, cin*kh*kw] x im2col[cin*kh*kw, h*w]` whose result is already the NCHW output, on
//! both backends, and because it is PyTorch's layout, so exported weights load there as they are.

pub mod adam;
pub mod add;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod batchnorm;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
pub mod calibration;
pub mod conv2d;
#[cfg(target_arch = "x86_64")]
pub mod conv2d_bf16;
pub mod conv2d_grouped;
pub mod dense;
pub mod dropout;
pub mod face_crop;
pub mod maxpool2d;
pub mod reduce;
pub mod relu;
pub mod sgd;
pub mod sigmoid;
pub mod softmax_xent;
pub mod upsample;
pub mod warp;
pub mod winograd;
pub mod yunet_decode;

use crate::error::Result;
use crate::gpu::{GpuBuffer, Recorder};

/// A strided view of a matrix for the CPU product: element (r, c) is `data[r * row + c * col]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, row: cols, col: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, row: 1, col: cols }
    }
}

/// `c[m, n] (+)= sum_k a[m, k] * b[k, n]` with `c` row-major, through the `gemm` crate (packed,
/// SIMD micro-kernels). `threads` > 1 lets it split the product across the rayon pool.
pub fn sgemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool, threads: usize) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "sgemm: output too short");
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let last = |v: &MatRef, r: usize, cols: usize| (r - 1) * v.row + (cols - 1) * v.col;
    assert!(last(&a, m, k) < a.data.len() && last(&b, k, n) < b.data.len(), "sgemm: operand too short");
    // Below about 16M multiply-adds the gemm crate's split across threads costs more than it
    // saves: starting and synchronising the threads outweighs a small product.
    const MIN_PARALLEL_MACS: usize = 1 << 24;
    let parallelism = if threads > 1 && m * n * k >= MIN_PARALLEL_MACS { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index the product touches inside the slices, and
    // `c` is exclusively borrowed, so the raw pointers are valid and do not alias it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs an element-wise kernel over `n` elements, chunked so each binding fits the device.
/// `f` records one chunk given its element range.
pub(crate) fn for_each_chunk(rec: &mut Recorder, op: &'static str, n: usize, bindings: usize, mut f: impl FnMut(&mut Recorder, std::ops::Range<usize>) -> Result<()>) -> Result<()> {
    let chunks = rec.gpu().plan_chunks(op, n, &vec![4; bindings], u32::MAX as usize)?;
    for range in chunks {
        f(rec, range)?;
    }
    Ok(())
}

/// Checks a GPU buffer's length against what the op expects.
pub(crate) fn check_buf<T: bytemuck::Pod>(op: &'static str, name: &str, buf: &GpuBuffer<T>, expected: usize) -> Result<()> {
    crate::error::check_len(op, name, buf.len(), expected)
}

/// Elements a rayon task gets at least in the element-wise and per-plane CPU kernels: enough
/// work that small layers (batch-1 inference, a dense layer's [batch, features]) are not split
/// into tasks that cost more to schedule than to run.
pub(crate) const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// Items of `item_len` elements per rayon task (see [`MIN_TASK_ELEMENTS`]).
pub(crate) fn items_per_task(item_len: usize) -> usize {
    (MIN_TASK_ELEMENTS / item_len.max(1)).max(1)
}

/// Whether a batch is big enough to hand each rayon thread whole images (true) or better
/// served by letting the matrix product itself use the threads (false).
pub(crate) fn parallel_over_batch(batch: usize) -> bool {
    batch >= rayon::current_num_threads()
}

/// Defines a function whose body is compiled, on x86-64, three times: for AVX-512, for AVX2
/// with FMA and for the baseline (SSE2, which the crate is built for so that it runs
/// anywhere), and runs the widest the CPU has; on other targets, once for their baseline. For loops the compiler vectorizes: written
/// plainly, they get 16 lanes on AVX-512 instead of SSE2's 4. The gemm crate chooses its own
/// kernels the same way.
macro_rules! widest_vectors {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                let has_avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
                if has_avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2 {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use widest_vectors;

thread_local! {
    static COL_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's im2col scratch of `len` values (contents unspecified). The buffer
/// is kept between calls: allocating megabytes per image costs page faults and zeroing, a
/// quarter of batch-1 inference. It is taken out while in use, so a call nested through
/// rayon's work stealing gets a buffer of its own instead of a double borrow. It never
/// shrinks: each thread keeps its largest layer's columns (2.2 MB for the original model).
pub(crate) fn with_col_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut col = COL_SCRATCH.take();
    if col.len() < len {
        col.resize(len, 0.0);
    }
    let r = f(&mut col[..len]);
    COL_SCRATCH.set(col);
    r
}
