//! Training runs and evaluation: epochs of shuffled, augmented batches; validation after each
//! epoch; early stopping that restores the best weights; reduce-on-plateau; a checkpoint
//! after every epoch, written as one unit so a run killed at any point resumes where it
//! stopped.
//!
//! A checkpoint is a folder `checkpoint-NNNN` (N the epochs finished) holding the weights,
//! the optimizer's state, the best weights so far and `state.json`. It is written under the
//! name `checkpoint-NNNN.partial` and renamed when complete, so a folder without the suffix is
//! always whole; the previous checkpoint is removed only after that rename. The run folder is
//! locked while a run trains in it.

use super::{balanced_class_weights, fnv1a, ClassScores, DataFingerprint, EpochMetrics, Evaluation, Recipe, RunState, Schedule};
use crate::augment::Tta;
use crate::calibration::Reliability;
use crate::data::{self, Dataset, CLASSES};
use crate::error::{file_err, Error, Result};
use crate::kernels::warp::Augment;
use crate::nn::model::{add_into, scale, Model, Teacher};
use crate::nn::weights::{write_atomic, Part};
use crate::nn::{Backend, BatchInFlight};
use crate::rng::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The bytes and labels of the images at `indices`, gathered into one batch.
fn gather(data: &Dataset, indices: &[usize]) -> (Vec<u8>, Vec<u32>) {
    let bytes = indices.iter().flat_map(|&i| data.image(i).iter().copied()).collect();
    (bytes, indices.iter().map(|&i| data.labels[i] as u32).collect())
}

/// The teacher's probabilities of the images at `indices`, if the data has a teacher.
fn gather_teacher(data: &Dataset, indices: &[usize]) -> Option<Vec<f32>> {
    let classes = CLASSES.len();
    data.teacher.as_ref().map(|probs| indices.iter().flat_map(|&i| probs[i * classes..][..classes].iter().copied()).collect())
}

/// Accuracy, loss, confusion matrix, per-class scores and calibration of `models` (one, or an
/// ensemble) on `data`, each image classified by the mean probabilities of the views `tta`
/// takes of it, averaged over the views of each model and then over the models.
/// `single_accuracy` is that of the centre crops alone; `logits` are those of the centre crop
/// (for an ensemble, the logarithm of the models' mean probabilities, whose softmax is that mean).
pub fn evaluate<B: Backend>(models: &mut [Model<B>], backend: &B, data: &Dataset, batch: usize, tta: Tta) -> Result<Evaluation> {
    evaluate_observed(models, backend, data, batch, tta, &mut ())
}

/// `evaluate`, telling `observer` the figures so far after each batch.
pub fn evaluate_observed<B: Backend>(models: &mut [Model<B>], backend: &B, data: &Dataset, batch: usize, tta: Tta, observer: &mut dyn Observer) -> Result<Evaluation> {
    let classes = models.first().ok_or_else(|| Error::Invalid("evaluation needs a model".into()))?.config.classes;
    let views: Vec<Vec<Augment>> = models.iter().map(|m| tta.views(m.input_side())).collect();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut reliability = Reliability::default();
    let mut loss_sum = 0.0f64;
    let mut single_correct = 0usize;
    let (mut logits, mut averaged) = (Vec::with_capacity(data.len()), Vec::with_capacity(data.len()));
    let (started, batches) = (Instant::now(), data.len().div_ceil(batch.max(1)));
    // Adds a finished batch (every view of it, from every model) to the figures.
    let mut tally = |labels: Vec<u32>, queued: Vec<Vec<BatchInFlight<B>>>| -> Result<()> {
        let (mut probs, mut centre) = (vec![0.0; labels.len() * classes], vec![0.0; labels.len() * classes]);
        let (model_count, alone) = (queued.len(), queued.len() == 1 && queued[0].len() == 1);
        for model_views in queued {
            let mut model_probs = vec![0.0; probs.len()];
            let view_count = model_views.len();
            for (v, view) in model_views.into_iter().enumerate() {
                let r = view.wait(backend)?;
                let view_probs = r.probs.expect("evaluation returns probabilities");
                if v == 0 {
                    add_into(&mut centre, &view_probs);
                    if model_count == 1 {
                        logits.extend(r.logits.as_deref().expect("evaluation returns logits").chunks(classes).map(<[f32]>::to_vec));
                    }
                    if alone {
                        loss_sum += r.loss as f64 * labels.len() as f64;
                    }
                }
                add_into(&mut model_probs, &view_probs);
            }
            scale(&mut model_probs, view_count);
            add_into(&mut probs, &model_probs);
        }
        scale(&mut probs, model_count);
        scale(&mut centre, model_count);
        if model_count > 1 {
            logits.extend(centre.chunks(classes).map(|row| row.iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect()));
        }
        if !alone {
            // The cross-entropy of the mean, the probabilities the label comes from.
            loss_sum -= probs.chunks(classes).zip(&labels).map(|(row, &l)| (row[l as usize].max(f32::MIN_POSITIVE) as f64).ln()).sum::<f64>();
        }
        single_correct += centre.chunks(classes).zip(&labels).filter(|&(row, &l)| data::most_probable(row) == l as usize).count();
        averaged.extend(probs.chunks(classes).map(<[f32]>::to_vec));
        for (row, &label) in probs.chunks(classes).zip(&labels) {
            let predicted = data::most_probable(row);
            confusion[label as usize][predicted] += 1;
            reliability.add(row, label as usize);
        }
        let seen = averaged.len();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        observer.batch(seen.div_ceil(batch.max(1)), batches, loss_sum / seen as f64, correct as f64 / seen as f64, seen as f64 / started.elapsed().as_secs_f64());
        Ok(())
    };
    // As in training, one batch stays in flight: batch N + 1 (every view of it) is queued
    // before batch N's results are read.
    let mut in_flight = None;
    let order: Vec<usize> = (0..data.len()).collect();
    for chunk in order.chunks(batch.max(1)) {
        let (images, labels) = gather(data, chunk);
        let queued = models
            .iter_mut()
            .zip(&views)
            .map(|(model, views)| views.iter().map(|view| model.submit_evaluation(backend, &images, *view, &labels)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        if let Some((labels, queued)) = in_flight.replace((labels, queued)) {
            tally(labels, queued)?;
        }
    }
    if let Some((labels, queued)) = in_flight.take() {
        tally(labels, queued)?;
    }
    let n = data.len().max(1);
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = (0..classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..classes).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassScores { class: CLASSES.get(c).map_or(c.to_string(), |s| s.to_string()), precision, recall, f1, support }
        })
        .collect();
    let (accuracy, single_accuracy) = (correct as f64 / n as f64, single_correct as f64 / n as f64);
    let ece = reliability.ece();
    Ok(Evaluation { images: data.len(), tta, logits, probs: averaged, accuracy, single_accuracy, loss: loss_sum / n as f64, ece, reliability, confusion, per_class })
}

/// The files of a run folder: its checkpoints, and what it publishes for people (the best
/// weights, metrics and plots), which are refreshed from each checkpoint once it is whole.
#[derive(Clone)]
pub struct RunFiles {
    pub dir: PathBuf,
}

/// The files of one checkpoint folder.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub epoch: usize,
}

impl Checkpoint {
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn weights(&self) -> PathBuf {
        self.dir.join("weights.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.dir.join("optimizer.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }

    pub fn read_state(&self) -> Result<RunState> {
        let text = std::fs::read_to_string(self.state()).map_err(|e| file_err(&self.state(), format!("cannot read: {e}")))?;
        serde_json::from_str(&text).map_err(|e| file_err(&self.state(), format!("not a run state: {e}")))
    }
}

const CHECKPOINT_PREFIX: &str = "checkpoint-";
const PARTIAL_SUFFIX: &str = ".partial";
const TEACHER_PROBABILITIES: &str = "teacher_probabilities.f32";

impl RunFiles {
    /// The best weights, published after each checkpoint.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }

    /// The teachers' probabilities of the training images (little-endian f32, a row of
    /// [`CLASSES`] per image), saved by a distilling run after its teachers' pass, so that a
    /// resumed run reads them back instead of classifying every image again.
    pub fn teacher_probabilities(&self) -> PathBuf {
        self.dir.join(TEACHER_PROBABILITIES)
    }

    fn checkpoint(&self, epoch: usize) -> Checkpoint {
        Checkpoint { dir: self.dir.join(format!("{CHECKPOINT_PREFIX}{epoch:04}")), epoch }
    }

    /// Every whole checkpoint in the folder, oldest first, and the partial ones a killed run
    /// left.
    fn scan(&self) -> Result<(Vec<Checkpoint>, Vec<PathBuf>)> {
        let (mut whole, mut partial) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((whole, partial)),
            Err(e) => return Err(file_err(&self.dir, format!("cannot list the run folder: {e}"))),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(CHECKPOINT_PREFIX) else { continue };
            if rest.ends_with(PARTIAL_SUFFIX) {
                partial.push(entry.path());
            } else if let Ok(epoch) = rest.parse::<usize>() {
                whole.push(Checkpoint { dir: entry.path(), epoch });
            }
        }
        whole.sort_by_key(|c| c.epoch);
        Ok((whole, partial))
    }

    /// The newest whole checkpoint, if the folder holds one.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        Ok(self.scan()?.0.pop())
    }

    /// Removes every checkpoint and published file of an earlier run (and the files of a run
    /// saved before checkpoint folders), for `--overwrite`.
    fn clear(&self) -> Result<()> {
        let (whole, partial) = self.scan()?;
        for dir in whole.into_iter().map(|c| c.dir).chain(partial) {
            std::fs::remove_dir_all(&dir).map_err(|e| file_err(&dir, format!("cannot remove: {e}")))?;
        }
        for name in ["best.safetensors", "metrics.csv", "metrics.json", "training_curves.png", "state.json", "weights.safetensors", "optimizer.safetensors", TEACHER_PROBABILITIES] {
            let path = self.dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| file_err(&path, format!("cannot remove: {e}")))?;
            }
        }
        Ok(())
    }
}

/// An exclusive OS lock on a run folder, held while a run trains in it and released when
/// dropped (or when the process dies), so two runs never write one folder's checkpoints.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create the run folder: {e}")))?;
        let path = dir.join("run.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| file_err(&path, format!("cannot open: {e}")))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(file_err(dir, "another mien train is running in this run folder; wait for it or choose another --out")),
            Err(std::fs::TryLockError::Error(e)) => Err(file_err(&path, format!("cannot lock: {e}"))),
        }
    }
}

/// Ends the process at the named write point of the checkpoint after `epoch`, when
/// `MIEN_FAIL_POINT=<name>@<epoch>` asks for it: how the tests kill a run at every point.
fn fail_point(name: &str, epoch: usize) {
    if std::env::var("MIEN_FAIL_POINT").is_ok_and(|v| v == format!("{name}@{epoch}")) {
        eprintln!("MIEN_FAIL_POINT: stopping at {name} of epoch {epoch}");
        std::process::exit(86);
    }
}

/// The names of [`fail_point`]s, in the order a checkpoint passes them.
pub const FAIL_POINTS: [&str; 7] = ["weights", "optimizer", "best", "state", "commit", "prune", "publish"];

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| file_err(dir, format!("cannot sync: {e}")))
}

/// `link` becomes another name of `target` (a copy where hard links are not possible),
/// replacing what `link` named in one step.
fn link_atomic(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(target, &tmp).is_err() {
        std::fs::copy(target, &tmp).map_err(|e| file_err(&tmp, format!("cannot copy {}: {e}", target.display())))?;
    }
    std::fs::rename(&tmp, link).map_err(|e| file_err(link, format!("cannot replace: {e}")))?;
    // Renaming one hard link of a file over another of the same file does nothing and leaves
    // both (POSIX), which is what happens when the best weights did not change: the temporary
    // name goes too.
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

fn metadata(state: &RunState, accuracy: f64) -> HashMap<String, String> {
    HashMap::from([
        ("model".to_string(), serde_json::to_string(&state.model).unwrap_or_default()),
        ("classes".to_string(), CLASSES.join(",")),
        ("val_accuracy".to_string(), format!("{accuracy:.4}")),
        ("epochs".to_string(), state.epoch.to_string()),
        ("device".to_string(), state.device.clone()),
        ("saved".to_string(), jiff::Timestamp::now().to_string()),
    ])
}

/// Told how work goes, so the caller can show progress, log and plot: after each batch of
/// training or evaluation, and after each epoch with the run state.
pub trait Observer {
    fn batch(&mut self, _done: usize, _total: usize, _loss: f64, _accuracy: f64, _images_per_second: f64) {}
    fn epoch(&mut self, _state: &RunState) {}
}

/// Observes nothing.
impl Observer for () {}

/// Whether `train` starts a new run or continues the one saved in the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; refused if the folder already holds one.
    New,
    /// A new run replacing whatever run the folder holds.
    Overwrite,
    /// Continue the run saved in the folder.
    Resume,
}

/// Trains `model` on `train`, validating on `val`, writing checkpoints into `files.dir`.
/// Returns the final state; the model holds the best weights.
pub fn train<B: Backend>(model: &mut Model<B>, backend: &B, train: &Dataset, val: &Dataset, recipe: &Recipe, files: &RunFiles, start: Start, observer: &mut dyn Observer) -> Result<RunState> {
    recipe.validate()?;
    check_teacher(recipe, train)?;
    Run::open(model, backend, train, val, recipe, files, start)?.train(model, backend, train, val, observer)
}

/// Refuses a distilling recipe for training images without their teacher's probabilities.
fn check_teacher(recipe: &Recipe, train: &Dataset) -> Result<()> {
    if recipe.distill > 0.0 && train.teacher.is_none() {
        return Err(Error::Invalid(format!("the recipe distills from {} at weight {}, but the training images have no teacher probabilities", recipe.teachers.join(", "), recipe.distill)));
    }
    Ok(())
}

/// A run folder opened for training: locked, its recipe and data checked against what it
/// holds, and a resumed run's checkpoint loaded into the model. Opening is separate from
/// training so that a caller can refuse a wrong start before slow preparation, such as the
/// teachers' pass over the training images, which `train` then needs.
pub struct Run {
    _lock: RunLock,
    files: RunFiles,
    state: RunState,
    data: DataFingerprint,
}

impl Run {
    pub fn open<B: Backend>(model: &mut Model<B>, backend: &B, train: &Dataset, val: &Dataset, recipe: &Recipe, files: &RunFiles, start: Start) -> Result<Run> {
        recipe.validate()?;
        if train.is_empty() || val.is_empty() {
            return Err(Error::Invalid(format!("nothing to train on: {} training and {} validation images", train.len(), val.len())));
        }
        // Teachers named by their weights files (the CLI's) are hashed; others (a library
        // caller's own probabilities) have nothing to hash.
        let teacher_hashes = recipe
            .teachers
            .iter()
            .map(|path| match std::fs::read(path) {
                Ok(bytes) => Ok(fnv1a([bytes.as_slice()])),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(file_err(Path::new(path), format!("cannot read the teacher's weights: {e}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let lock = RunLock::acquire(&files.dir)?;
        // What a run killed mid-checkpoint left: the partial folder it was writing, or the
        // checkpoint before the one it had just completed.
        let (mut whole, partial) = files.scan()?;
        whole.pop();
        for dir in partial.into_iter().chain(whole.into_iter().map(|c| c.dir)) {
            std::fs::remove_dir_all(&dir).map_err(|e| file_err(&dir, format!("cannot remove an outdated checkpoint: {e}")))?;
        }
        let data = DataFingerprint::of(train, val);
        let latest = files.latest()?;
        let state = match (start, latest) {
            // Before checkpoint folders, a run kept state.json and its weights in the folder itself.
            (Start::Resume | Start::New, None) if files.dir.join("state.json").exists() => {
                return Err(file_err(
                    &files.dir,
                    "holds a run saved by an earlier mien (state.json beside its weights), which cannot be resumed; pass --overwrite to replace it, or choose another --out",
                ))
            }
            (Start::Resume, None) => return Err(file_err(&files.dir, "nothing to resume: the folder holds no checkpoint")),
            (Start::Resume, Some(checkpoint)) => {
                let mut state = checkpoint.read_state()?;
                // Only the number of epochs may change on resuming: anything else would make the
                // resumed run differ from an uninterrupted one.
                if state.model != model.config || (Recipe { epochs: recipe.epochs, ..state.recipe.clone() }) != *recipe {
                    return Err(file_err(&checkpoint.state(), "the saved run used a different model or recipe; resume with the same options (only --epochs may change)"));
                }
                if let Some(saved) = state.data.as_ref().filter(|saved| **saved != data) {
                    return Err(file_err(
                        &checkpoint.state(),
                        format!(
                            "the saved run trained on other data ({} training and {} validation images, hash {}) than --data gives now ({}, {}, hash {}); resume with the same --data and options",
                            saved.train_images, saved.val_images, saved.hash, data.train_images, data.val_images, data.hash
                        ),
                    ));
                }
                let saved_hashes = state.teacher_hashes.get_or_insert_with(|| teacher_hashes.clone());
                if let Some(((path, saved), now)) = recipe.teachers.iter().zip(saved_hashes.iter()).zip(&teacher_hashes).find(|((_, saved), now)| saved != now) {
                    return Err(file_err(
                        Path::new(path),
                        format!("this teacher's weights changed since the run began (hash {saved}, now {now}): the resumed run would distil from another model; put the file back or start a new run"),
                    ));
                }
                state.recipe.epochs = recipe.epochs;
                model.load(backend, &checkpoint.weights(), Part::Value)?;
                model.load(backend, &checkpoint.optimizer(), Part::Moments)?;
                state
            }
            (Start::New, Some(checkpoint)) => {
                let saved = checkpoint.read_state()?;
                let how = if saved.epoch >= saved.recipe.epochs || saved.stopped.is_some() { "a finished run" } else { "an unfinished run" };
                return Err(file_err(
                    &files.dir,
                    format!("holds {how} ({} of {} epochs); pass --resume to continue it, --overwrite to replace it, or choose another --out", saved.epoch, saved.recipe.epochs),
                ));
            }
            (Start::New | Start::Overwrite, _) => {
                files.clear()?;
                RunState {
                    model: model.config.clone(),
                    recipe: recipe.clone(),
                    device: backend.describe(),
                    epoch: 0,
                    step: 0,
                    lr: recipe.lr,
                    best_accuracy: -1.0,
                    best_epoch: 0,
                    best_val_loss: f64::INFINITY,
                    epochs_since_best_loss: 0,
                    history: Vec::new(),
                    stopped: None,
                    data: Some(data.clone()),
                    teacher_hashes: Some(teacher_hashes),
                }
            }
        };
        Ok(Run { _lock: lock, files: files.clone(), state, data })
    }

    /// The teachers' probabilities of `train` that this run saved before it was stopped, if
    /// it saved them whole: opening checked that its data and its teachers' weights are those
    /// they were computed from. A new run finds none: opening removed an earlier run's.
    pub fn saved_teacher_probabilities(&self, train: &Dataset) -> Result<Option<Vec<f32>>> {
        let path = self.files.teacher_probabilities();
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, format!("cannot read: {e}")))?;
        if bytes.len() != train.len() * CLASSES.len() * 4 {
            return Ok(None);
        }
        Ok(Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }

    /// Saves the teachers' probabilities of the training images for a resumed run to read.
    pub fn save_teacher_probabilities(&self, probs: &[f32]) -> Result<()> {
        write_atomic(&self.files.teacher_probabilities(), &probs.iter().flat_map(|p| p.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Trains from where the run stands; `train` and `val` must be the sets it was opened
    /// with, and the training set needs its teacher probabilities if the recipe distils.
    pub fn train<B: Backend>(self, model: &mut Model<B>, backend: &B, train: &Dataset, val: &Dataset, observer: &mut dyn Observer) -> Result<RunState> {
        let Run { _lock, ref files, mut state, data, .. } = self;
        if DataFingerprint::of(train, val) != data {
            return Err(Error::Invalid("the run was opened with other training or validation images than it is trained on".into()));
        }
        let recipe = &state.recipe.clone();
        check_teacher(recipe, train)?;
        if recipe.class_weights {
            model.set_class_weights(backend, &balanced_class_weights(train))?;
        }
        let root = Rng::new(recipe.seed);
        model.label_smoothing = recipe.label_smoothing;
        while state.epoch < recipe.epochs && state.stopped.is_none() {
            let epoch = state.epoch + 1;
            if recipe.schedule == Schedule::Cosine {
                state.lr = recipe.cosine_lr(epoch);
            }
            // Each epoch's shuffle and augmentation come from its own stream, so a resumed run
            // draws exactly what an uninterrupted one would have.
            let mut rng = root.fork(epoch as u64);
            let mut order: Vec<usize> = (0..train.len()).collect();
            rng.shuffle(&mut order);
            let start = Instant::now();
            let optimizer = recipe.optimizer.at(state.lr);
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let batches = order.len().div_ceil(recipe.batch);
            // Adds a finished step to the epoch's figures; a non-finite loss ends the run.
            let last_good = files.latest()?.map_or_else(|| "none (no epoch finished)".to_string(), |c| c.dir.display().to_string());
            let mut tally = |(b, images, step): (usize, usize, BatchInFlight<B>)| -> Result<()> {
                let r = step.wait(backend)?;
                if !r.loss.is_finite() {
                    return Err(Error::Training(format!(
                        "epoch {epoch}, batch {}: the loss became {} (learning rate {}); stopping. The last good checkpoint is {last_good} (epoch {}).",
                        b + 1,
                        r.loss,
                        state.lr,
                        state.epoch
                    )));
                }
                loss_sum += r.loss as f64 * images as f64;
                correct += r.correct as usize;
                seen += images;
                observer.batch(b + 1, batches, loss_sum / seen as f64, correct as f64 / seen as f64, seen as f64 / start.elapsed().as_secs_f64());
                Ok(())
            };
            // One step stays in flight: step N + 1 is queued before step N's loss is read, so a GPU
            // does not idle while the host gathers and records the next batch. A non-finite loss
            // is so caught one step late, with the weights already spoiled by its own update.
            let mut in_flight = None;
            for (b, chunk) in order.chunks(recipe.batch).enumerate() {
                let (images, labels) = gather(train, chunk);
                let taught = if recipe.distill > 0.0 { gather_teacher(train, chunk) } else { None };
                let teacher = taught.as_deref().map(|probs| Teacher { probs, weight: recipe.distill });
                let augments: Vec<Augment> = chunk.iter().map(|_| recipe.augment.draw(model.input_side(), &mut rng)).collect();
                state.step += 1;
                let step = model.submit_taught_step(backend, &images, &augments, &labels, teacher, rng.next_u32(), optimizer, state.step)?;
                if let Some(previous) = in_flight.replace((b, chunk.len(), step)) {
                    tally(previous)?;
                }
            }
            if let Some(last) = in_flight.take() {
                tally(last)?;
            }
            let train_seconds = start.elapsed().as_secs_f64();
            let eval = evaluate(std::slice::from_mut(model), backend, val, recipe.batch, recipe.validation_tta())?;
            let metrics = EpochMetrics {
                epoch,
                lr: state.lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val_loss: eval.loss,
                val_accuracy: eval.accuracy,
                val_accuracy_single: (eval.tta != Tta::None).then_some(eval.single_accuracy),
                images_per_second: seen as f64 / train_seconds,
                seconds: start.elapsed().as_secs_f64(),
            };
            state.epoch = epoch;
            state.history.push(metrics);
            let improved = eval.accuracy > state.best_accuracy;
            if improved {
                state.best_accuracy = eval.accuracy;
                state.best_epoch = epoch;
            }
            // Tracked under every schedule (and so never left infinite, which JSON cannot hold).
            if eval.loss < state.best_val_loss {
                state.best_val_loss = eval.loss;
                state.epochs_since_best_loss = 0;
            } else {
                state.epochs_since_best_loss += 1;
                let plateau = recipe.schedule == Schedule::Plateau && recipe.plateau_patience > 0;
                if plateau && state.epochs_since_best_loss >= recipe.plateau_patience && state.lr > recipe.min_lr {
                    state.lr = (state.lr * recipe.plateau_factor).max(recipe.min_lr);
                    state.epochs_since_best_loss = 0;
                }
            }
            if recipe.patience > 0 && epoch - state.best_epoch >= recipe.patience {
                state.stopped = Some(format!("early stop: validation accuracy has not improved for {} epochs since epoch {}", recipe.patience, state.best_epoch));
            }
            write_checkpoint(model, backend, files, &state, improved, eval.accuracy)?;
            observer.epoch(&state);
        }
        // Again here, so that a run resumed after its last epoch still gets its files and plots.
        write_metrics(&files.dir, &state.history)?;
        if let Some(checkpoint) = files.latest()? {
            link_atomic(&checkpoint.best(), &files.best())?;
            // Early stopping restores the best weights (Keras' restore_best_weights).
            model.load(backend, &checkpoint.best(), Part::Value)?;
        }
        Ok(state)
    }
}

/// Writes the checkpoint of the epoch `state` has just finished as one unit, then removes the
/// one before it and publishes the best weights and metrics.
fn write_checkpoint<B: Backend>(model: &Model<B>, backend: &B, files: &RunFiles, state: &RunState, improved: bool, accuracy: f64) -> Result<()> {
    let epoch = state.epoch;
    let previous = files.latest()?;
    let done = files.checkpoint(epoch);
    let partial = Checkpoint { dir: done.dir.with_extension(PARTIAL_SUFFIX.trim_start_matches('.')), epoch };
    std::fs::create_dir_all(&partial.dir).map_err(|e| file_err(&partial.dir, format!("cannot create: {e}")))?;
    model.save(backend, &partial.weights(), Part::Value, metadata(state, accuracy))?;
    fail_point("weights", epoch);
    model.save(backend, &partial.optimizer(), Part::Moments, HashMap::new())?;
    fail_point("optimizer", epoch);
    match previous.as_ref().filter(|_| !improved) {
        Some(previous) => link_atomic(&previous.best(), &partial.best())?,
        None => model.save(backend, &partial.best(), Part::Value, metadata(state, accuracy))?,
    }
    fail_point("best", epoch);
    write_atomic(&partial.state(), serde_json::to_string_pretty(state).map_err(|e| file_err(&partial.state(), e.to_string()))?.as_bytes())?;
    sync_dir(&partial.dir)?;
    fail_point("state", epoch);
    std::fs::rename(&partial.dir, &done.dir).map_err(|e| file_err(&done.dir, format!("cannot rename {} to it: {e}", partial.dir.display())))?;
    sync_dir(&files.dir)?;
    fail_point("commit", epoch);
    if let Some(previous) = previous {
        std::fs::remove_dir_all(&previous.dir).map_err(|e| file_err(&previous.dir, format!("cannot remove the previous checkpoint: {e}")))?;
    }
    fail_point("prune", epoch);
    link_atomic(&done.best(), &files.best())?;
    write_metrics(&files.dir, &state.history)?;
    fail_point("publish", epoch);
    Ok(())
}

fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<()> {
    #[cfg(feature = "plot")]
    crate::plot::training_curves(&dir.join("training_curves.png"), history)?;
    let mut csv = String::from("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,val_accuracy_single,images_per_second,seconds\n");
    for m in history {
        let single = m.val_accuracy_single.map_or(String::new(), |a| format!("{a:.5}"));
        csv.push_str(&format!("{},{},{:.5},{:.5},{:.5},{:.5},{},{:.1},{:.1}\n", m.epoch, m.lr, m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, single, m.images_per_second, m.seconds));
    }
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    let json = serde_json::to_string_pretty(history).map_err(|e| Error::Invalid(format!("metrics: {e}")))?;
    write_atomic(&dir.join("metrics.json"), json.as_bytes())
}
