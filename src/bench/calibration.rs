//! The kernel benchmark's yardsticks: multiply-adds on registers alone (the peak), a plain,
//! well-shaped 1024^3 product and a 64 MiB vec4 copy, set up once and timed again before each
//! kernel. On a shared host their speed moves between runs by more than a kernel's does, so a
//! kernel's percentages are taken against the calibrations measured just before it.

use super::{seeded, time_gpu, GpuRun, Work};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::calibration::{copy_gpu, fma_gpu, sgemm_gpu, FMA_FLOPS_PER_ITERATION};

/// Iterations per thread of the FMA calibration: 32,768 multiply-adds, so that a thread's
/// setup and store are lost beside them (with few iterations they hold the rate well below
/// the peak).
const FMA_ITERATIONS: u32 = 256;

/// The FMA calibration's run should take about this long, so that timing and launch costs are
/// small beside it.
const FMA_TARGET_MS: f64 = 20.0;

/// The threads that make the FMA calibration take about [`FMA_TARGET_MS`]: doubled from one
/// workgroup until a run takes a quarter of that, which only happens once they fill the
/// adapter (lavapipe: a few thousand; a large GPU: millions), then scaled.
fn fma_threads(gpu: &Gpu) -> Result<usize> {
    let mut threads = 256usize;
    loop {
        let sums = gpu.zeros::<f32>(threads)?;
        let ms = time_gpu(gpu, &|rec| fma_gpu(rec, threads, FMA_ITERATIONS, &sums), 1)?.ms.median;
        if ms >= FMA_TARGET_MS / 4.0 || threads >= 1 << 24 {
            let scaled = (threads as f64 * FMA_TARGET_MS / ms.max(1e-3)) as usize;
            // Each thread writes one float, within what one binding may hold.
            let most = (gpu.binding_limit() as usize / 4).min(threads * 8) / 256 * 256;
            return Ok(scaled.next_multiple_of(256).clamp(256, most.max(256)));
        }
        threads *= 2;
    }
}

/// One calibration and the floating-point operations or bytes a run of it does.
struct Probe {
    run: GpuRun,
    work: f64,
}

impl Probe {
    /// GFLOP/s or GB/s (median of `reps`).
    fn rate(&self, gpu: &Gpu, reps: usize) -> Result<f64> {
        Ok(self.work / (time_gpu(gpu, &self.run, reps)?.ms.median / 1e3) / 1e9)
    }
}

/// The adapter's measured peaks.
pub struct Peaks {
    pub fma_gflops: f64,
    pub sgemm_gflops: f64,
    pub copy_gbps: f64,
}

/// The rates one kernel's percentages divide by, named as in [`super::KernelResult`].
pub(super) struct Yardsticks {
    /// The SGEMM's GFLOP/s or the copy's GB/s.
    pub yardstick: f64,
    /// The FMA's GFLOP/s, for compute-bound kernels.
    pub fma_yardstick: Option<f64>,
}

pub(super) struct Calibration {
    fma: Probe,
    sgemm: Probe,
    copy: Probe,
}

impl Calibration {
    pub fn new(gpu: &Gpu) -> Result<Calibration> {
        let n = 1024usize;
        let a = gpu.upload(&seeded(n * n, 20))?;
        let b = gpu.upload(&seeded(n * n, 21))?;
        let c = gpu.zeros::<f32>(n * n)?;
        let len = (16usize << 20).min(gpu.binding_limit() as usize / 4) / 4 * 4;
        let src = gpu.upload(&seeded(len, 22))?;
        let dst = gpu.zeros::<f32>(len)?;
        let threads = fma_threads(gpu)?;
        let sums = gpu.zeros::<f32>(threads)?;
        Ok(Calibration {
            fma: Probe { run: Box::new(move |rec| fma_gpu(rec, threads, FMA_ITERATIONS, &sums)), work: FMA_FLOPS_PER_ITERATION * threads as f64 * FMA_ITERATIONS as f64 },
            sgemm: Probe { run: Box::new(move |rec| sgemm_gpu(rec, (n, n, n), &a, &b, &c)), work: 2.0 * (n * n * n) as f64 },
            copy: Probe { run: Box::new(move |rec| copy_gpu(rec, len, &src, &dst)), work: 2.0 * 4.0 * len as f64 },
        })
    }

    /// The three rates at the start of a run (median of `reps` each).
    pub fn peaks(&self, gpu: &Gpu, reps: usize) -> Result<Peaks> {
        Ok(Peaks { fma_gflops: self.fma.rate(gpu, reps)?, sgemm_gflops: self.sgemm.rate(gpu, reps)?, copy_gbps: self.copy.rate(gpu, reps)? })
    }

    /// The yardsticks for `work`, measured now: the SGEMM's GFLOP/s and the FMA's, or the
    /// copy's GB/s alone.
    pub fn for_work(&self, gpu: &Gpu, work: Work, reps: usize) -> Result<Yardsticks> {
        match work {
            Work::Flops(_) => Ok(Yardsticks { yardstick: self.sgemm.rate(gpu, reps)?, fma_yardstick: Some(self.fma.rate(gpu, reps)?) }),
            Work::Bytes(_) => Ok(Yardsticks { yardstick: self.copy.rate(gpu, reps)?, fma_yardstick: None }),
        }
    }
}
