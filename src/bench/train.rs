//! Training benchmark: training-step and inference throughput of a model config, and its batch-1
//! latency, on one backend with synthetic images.

use super::{summarize, TrainBench};
use crate::augment::Tta;
use crate::error::Result;
use crate::kernels::adam::AdamConfig;
use crate::kernels::conv2d::Precision;
use crate::kernels::warp;
use crate::nn::{Backend, BatchInFlight, Model, ModelConfig};
use indicatif::ProgressBar;
use std::time::Instant;

/// Batch-1 latency is the median of this many calls per repetition: a call takes about a
/// millisecond, and on a shared host the median of ten moved by half from run to run.
/// tools/torch_bench.py does the same.
pub const BATCH1_REPS_PER_REP: usize = 20;

/// Stages [`bench_train`] adds to a progress bar: training, inference, batch-1 latency.
pub const TRAIN_STAGES: usize = 3;

/// Times training steps and inference of `config` on `backend` with synthetic images,
/// median of `reps` after a warm-up (batch-1 latency: of [`BATCH1_REPS_PER_REP`] times as many);
/// inference runs as `mien eval` and `mien detect` do (batch norms folded), multiplying in
/// `precision`.
pub fn bench_train<B: Backend>(backend: &B, config: ModelConfig, batch: usize, reps: usize, precision: Precision, bar: &ProgressBar) -> Result<TrainBench> {
    let mut model = Model::new(backend, config, 1)?;
    model.precision = precision;
    let px = crate::data::PIXELS;
    let images: Vec<u8> = (0..batch * px).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 7).collect();
    let centre = warp::centre(model.input_side());
    let augments = vec![centre; batch];
    let name = model.config.name.clone();
    let stage = |what: &str| bar.set_message(format!("{name}: {what}"));
    let mut step = 0u64;
    stage("training steps");
    let train = median_pipelined(backend, reps, || {
        step += 1;
        model.submit_train_step(backend, &images, &augments, &labels, step as u32, AdamConfig::default(), step)
    })?;
    bar.inc(1);
    stage("inference");
    model.fold_for_inference(backend)?;
    let infer = median_pipelined(backend, reps, || model.submit_evaluation(backend, &images, centre, &labels))?;
    bar.inc(1);
    stage("batch-1 latency");
    let single = median_of(reps.max(1) * BATCH1_REPS_PER_REP, &mut || {
        model.predict(backend, &images[..px], Tta::None)?;
        Ok(())
    })?;
    bar.inc(1);
    Ok(TrainBench {
        model: model.config.name.clone(),
        parameters: model.parameter_count(),
        device: backend.describe(),
        threads: rayon::current_num_threads(),
        batch,
        reps: reps.max(1),
        train_images_per_second: batch as f64 / train,
        inference_images_per_second: batch as f64 / infer,
        inference_batch1_ms: single * 1e3,
    })
}

/// The median seconds of `reps` calls of `f`, after one call that warms caches and pipelines.
fn median_of(reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(summarize(samples).median)
}

/// The median seconds of a batch `submit` queues, run as `mien train` and `mien eval` run them:
/// batch N + 1 is queued before batch N's results are read, so the device never waits on the host.
fn median_pipelined<B: Backend>(backend: &B, reps: usize, mut submit: impl FnMut() -> Result<BatchInFlight<B>>) -> Result<f64> {
    let mut in_flight = None;
    let seconds = median_of(reps, &mut || {
        if let Some(previous) = in_flight.replace(submit()?) {
            previous.wait(backend)?;
        }
        Ok(())
    })?;
    if let Some(last) = in_flight.take() {
        last.wait(backend)?;
    }
    Ok(seconds)
}
