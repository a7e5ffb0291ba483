//! Training recipes (optimizer, schedule, augmentation, early stopping) and what a run
//! reports: its metrics per epoch, its saved state and evaluations. The loop that trains, with
//! its checkpoints on disk, is in [`run`] (native only: the browser has no file system and
//! trains a few steps of its own).

use crate::augment::{AugmentConfig, Tta};
use crate::calibration::Reliability;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::kernels::adam::AdamConfig;
use crate::kernels::sgd::SgdConfig;
use crate::kernels::warp;
use crate::nn::model::{Model, Optimizer};
use crate::nn::{Backend, ModelConfig};
use serde::{Deserialize, Serialize};

#[cfg(not(target_arch = "wasm32"))]
pub mod run;
#[cfg(not(target_arch = "wasm32"))]
pub use run::{evaluate, evaluate_observed, train, Checkpoint, Observer, Run, RunFiles, RunLock, Start, FAIL_POINTS};

/// Everything that decides how a run trains; saved in the run folder so `--resume` continues
/// with the same settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    /// The update rule. Runs saved before the field existed used Adam.
    #[serde(default)]
    pub optimizer: OptimizerChoice,
    /// Stop when validation accuracy has not improved for this many epochs (0: never).
    pub patience: usize,
    /// How the learning rate moves from `lr`. Runs saved before the field existed used the
    /// plateau rule.
    #[serde(default)]
    pub schedule: Schedule,
    /// With the cosine schedule: epochs over which the learning rate climbs linearly to `lr`
    /// before the cosine starts (0: none), since a large SGD step on fresh weights can diverge.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// With the plateau schedule: multiply the learning rate by `plateau_factor` when
    /// validation loss has not improved for this many epochs (0: never).
    pub plateau_patience: usize,
    pub plateau_factor: f32,
    pub min_lr: f32,
    /// Weight each class's loss by total / (classes * count), Keras' 'balanced' weights.
    pub class_weights: bool,
    /// Train towards (1 - e) * onehot + e / classes (Keras' label_smoothing); validation
    /// always scores the plain loss.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Distillation: the weight in [0, 1] of the teachers' probabilities in each image's
    /// target (0: none), and the teachers' weights files, whose mean mirror-averaged
    /// probabilities for each training image are those ([`crate::data::Dataset::set_teacher`]).
    #[serde(default)]
    pub distill: f32,
    #[serde(default)]
    pub teachers: Vec<String>,
    pub augment: AugmentConfig,
    pub seed: u64,
    /// Validation classifies each image by the mean probabilities of it and its mirror image
    /// (test-time augmentation, as `mien eval` and `mien detect` do by default), so the best
    /// epoch is the best at that. Runs saved before the field existed scored single images.
    #[serde(default)]
    pub mirror_eval: bool,
}

/// Learning-rate schedules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Keras' ReduceLROnPlateau on validation loss.
    #[default]
    Plateau,
    /// Half a cosine from `lr` down to `min_lr` over the run's epochs (those after the
    /// warm-up, if the recipe has one).
    Cosine,
}

/// The update rule a recipe trains with; its learning rate is the recipe's `lr` under its
/// schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// Adam with Keras' defaults (beta1 0.9, beta2 0.999, epsilon 1e-7).
    #[default]
    Adam,
    /// SGD with momentum and L2 weight decay on every trainable tensor, as PyTorch's `SGD`.
    Sgd(SgdSettings),
}

/// SGD's settings but the learning rate (see [`SgdConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdSettings {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

impl Default for SgdSettings {
    /// SGD as deep image classifiers commonly train: Nesterov momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        SgdSettings { momentum: 0.9, nesterov: true, weight_decay: 5e-4 }
    }
}

impl OptimizerChoice {
    /// The optimizer at learning rate `lr`.
    pub fn at(self, lr: f32) -> Optimizer {
        match self {
            OptimizerChoice::Adam => Optimizer::Adam(AdamConfig { lr, ..AdamConfig::default() }),
            OptimizerChoice::Sgd(SgdSettings { momentum, nesterov, weight_decay }) => Optimizer::Sgd(SgdConfig { lr, momentum, nesterov, weight_decay }),
        }
    }
}

impl Recipe {
    /// Refuses settings that would train nothing or nonsense, naming the flag that sets each.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::Invalid(what));
        if self.epochs == 0 {
            return invalid("--epochs 0: nothing to train".into());
        }
        if self.batch == 0 {
            return invalid("--batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return invalid(format!("the minimum learning rate {} must be in [0, --lr {}]", self.min_lr, self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return invalid(format!("--label-smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if !(0.0..=1.0).contains(&self.distill) {
            return invalid(format!("--distill must be in [0, 1], got {}", self.distill));
        }
        if (self.distill > 0.0) == self.teachers.is_empty() {
            return invalid(format!("--distill {} with {} --teacher weights: distillation needs both a weight above 0 and a teacher", self.distill, self.teachers.len()));
        }
        if !(self.plateau_factor > 0.0 && self.plateau_factor <= 1.0) {
            return invalid(format!("the plateau factor {} must be in (0, 1]", self.plateau_factor));
        }
        if let OptimizerChoice::Sgd(SgdSettings { momentum, weight_decay, .. }) = self.optimizer {
            if !(0.0..1.0).contains(&momentum) {
                return invalid(format!("--momentum must be in [0, 1), got {momentum}"));
            }
            if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                return invalid(format!("--weight-decay must be a number of at least 0, got {weight_decay}"));
            }
        }
        if self.warmup_epochs > 0 && self.schedule != Schedule::Cosine {
            return invalid("--warmup needs --schedule cosine".into());
        }
        if self.warmup_epochs >= self.epochs {
            return invalid(format!("--warmup {} must be below --epochs {}", self.warmup_epochs, self.epochs));
        }
        let a = &self.augment;
        let ranges = [("--rotation", a.rotation_deg, 180.0), ("--shear", a.shear_deg, 89.0), ("--zoom", a.zoom, 0.99), ("--shift", a.shift, 1.0), ("--erase", a.erase_probability, 1.0)];
        for (flag, value, max) in ranges {
            if !(0.0..=max).contains(&value) {
                return invalid(format!("{flag} must be in [0, {max}], got {value}"));
            }
        }
        Ok(())
    }

    /// The views validation averages.
    pub fn validation_tta(&self) -> Tta {
        if self.mirror_eval {
            Tta::Mirror
        } else {
            Tta::None
        }
    }

    /// The learning rate of `epoch` (counted from 1) under the cosine schedule: through the
    /// warm-up `lr * epoch / warmup_epochs`, so that its last epoch trains at `lr`, then the
    /// cosine over the epochs left.
    pub fn cosine_lr(&self, epoch: usize) -> f32 {
        let warmup = self.warmup_epochs;
        if epoch <= warmup {
            return (self.lr as f64 * epoch as f64 / warmup as f64) as f32;
        }
        let progress = (epoch - 1 - warmup) as f64 / self.epochs.saturating_sub(warmup).max(1) as f64;
        (self.min_lr as f64 + (self.lr - self.min_lr) as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }

    /// The original report's recipe: Adam at 1e-4, rotation 30, shear 0.3 (degrees, as Keras
    /// reads it), zoom 0.3, horizontal flips, 30 epochs, early stopping with patience 5.
    pub fn original() -> Self {
        Recipe {
            epochs: 30,
            batch: 64,
            lr: 1e-4,
            optimizer: OptimizerChoice::Adam,
            patience: 5,
            schedule: Schedule::Plateau,
            warmup_epochs: 0,
            plateau_patience: 0,
            plateau_factor: 0.5,
            min_lr: 1e-6,
            class_weights: false,
            label_smoothing: 0.0,
            distill: 0.0,
            teachers: Vec::new(),
            augment: AugmentConfig { rotation_deg: 30.0, shear_deg: 0.3, zoom: 0.3, horizontal_flip: true, ..AugmentConfig::CROP },
            seed: 1,
            mirror_eval: false,
        }
    }

    /// The default, for the VGG-style networks (data/models/vgg.json): SGD with Nesterov
    /// momentum 0.9 and weight decay 5e-4 at 0.01, warmed up over 3 epochs and brought down to
    /// nothing by a cosine, random 40x40 crops (the model's input side), flips, rotation 10,
    /// zoom 0.1 and random erasing with probability 0.5, as Khaireddin & Chen's 73 % FER2013
    /// recipe trains, over the epochs a 2-core CPU gives in about five hours. Batch norm and
    /// the augmentation regularise; no label smoothing, so the probabilities stay readable as
    /// confidences.
    pub fn default_recipe() -> Self {
        Recipe {
            epochs: 100,
            batch: 64,
            lr: 0.01,
            patience: 0,
            schedule: Schedule::Cosine,
            warmup_epochs: 3,
            min_lr: 0.0,
            label_smoothing: 0.0,
            distill: 0.0,
            teachers: Vec::new(),
            optimizer: OptimizerChoice::Sgd(SgdSettings { momentum: 0.9, nesterov: true, weight_decay: 5e-4 }),
            augment: AugmentConfig { rotation_deg: 10.0, zoom: 0.1, shift: 0.0, horizontal_flip: true, erase_probability: 0.5, ..AugmentConfig::CROP },
            mirror_eval: true,
            ..Self::original()
        }
    }

    /// The recipe that trained the original model's shipped weights: Adam at ten times the
    /// original recipe's learning rate, brought down to nothing over 40 epochs by a cosine,
    /// label smoothing 0.1, and light augmentation (rotation 5, zoom and shifts 0.05, flips), so
    /// the original model converges within 40 epochs. Its dropout layers regularise it enough
    /// that heavier augmentation leaves it underfitting. Validation averages each face with its
    /// mirror image.
    pub fn adam_recipe() -> Self {
        Recipe {
            epochs: 40,
            lr: 1e-3,
            patience: 10,
            schedule: Schedule::Cosine,
            min_lr: 0.0,
            label_smoothing: 0.1,
            distill: 0.0,
            teachers: Vec::new(),
            augment: AugmentConfig { rotation_deg: 5.0, zoom: 0.05, shift: 0.05, horizontal_flip: true, ..AugmentConfig::CROP },
            mirror_eval: true,
            ..Self::original()
        }
    }

    /// The recipe of the first shipped weights: the Adam recipe but for reduce-on-plateau
    /// (halving after 2 epochs without a lower validation loss), no label smoothing, patience 8
    /// and twice the augmentation.
    pub fn plateau_recipe() -> Self {
        let augment = Self::PLATEAU_AUGMENT;
        Recipe { patience: 8, schedule: Schedule::Plateau, plateau_patience: 2, min_lr: 1e-6, label_smoothing: 0.0, augment, mirror_eval: false, ..Self::adam_recipe() }
    }

    /// Twice the Adam recipe's augmentation: the plateau recipe's.
    pub const PLATEAU_AUGMENT: AugmentConfig = AugmentConfig { rotation_deg: 10.0, zoom: 0.1, shift: 0.1, horizontal_flip: true, ..AugmentConfig::CROP };
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Validation accuracy on the images alone, when `val_accuracy` averages mirror images.
    #[serde(default)]
    pub val_accuracy_single: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// A run's progress, saved after every epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub model: ModelConfig,
    pub recipe: Recipe,
    pub device: String,
    /// Epochs finished.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub lr: f32,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub epochs_since_best_loss: usize,
    pub history: Vec<EpochMetrics>,
    pub stopped: Option<String>,
    /// What the run trains and validates on, so `--resume` with other data is refused.
    /// Runs saved before the field existed have none and are not checked.
    #[serde(default)]
    pub data: Option<DataFingerprint>,
    /// A hash of each teacher's weights file (in the recipe's order; empty for a teacher that
    /// names no file), so that `--resume` does not distil from files changed since the run
    /// began. Runs saved before the field existed get it on their first resume.
    #[serde(default)]
    pub teacher_hashes: Option<Vec<String>>,
}

/// Image counts and a hash of the images and labels of a run's training and validation sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub train_images: usize,
    pub val_images: usize,
    /// FNV-1a over both sets' pixels and labels, in hexadecimal.
    pub hash: String,
}

impl DataFingerprint {
    pub fn of(train: &Dataset, val: &Dataset) -> Self {
        let hash = fnv1a([&train.images, &train.labels, &val.images, &val.labels].map(|bytes| bytes.as_slice()));
        DataFingerprint { train_images: train.len(), val_images: val.len(), hash }
    }
}

/// FNV-1a over `parts` in turn, in hexadecimal: a fingerprint, not a cryptographic hash.
pub(crate) fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    const PRIME: u64 = 0x100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.into_iter().flatten() {
        hash = (hash ^ b as u64).wrapping_mul(PRIME);
    }
    format!("{hash:016x}")
}

/// Accuracy, loss and the confusion matrix over a dataset.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub images: usize,
    /// The views whose mean probabilities classified each image.
    pub tta: Tta,
    /// Every image's logits, in dataset order (not serialised: it is for comparisons).
    #[serde(skip)]
    pub logits: Vec<Vec<f32>>,
    /// Every image's probabilities that classified it (the mean over the views and models), in
    /// dataset order (not serialised).
    #[serde(skip)]
    pub probs: Vec<Vec<f32>>,
    pub accuracy: f64,
    /// Accuracy on the centre crops alone (the same as `accuracy` with [`Tta::None`]).
    pub single_accuracy: f64,
    pub loss: f64,
    /// Expected calibration error of the top class over 15 confidence bins, in [0, 1].
    pub ece: f64,
    pub reliability: Reliability,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<usize>>,
    pub per_class: Vec<ClassScores>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassScores {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// A few training steps of the original report's network on one batch of synthetic images
/// (`data::synthetic`), Adam at 1e-3, no augmentation: the loss after each step, which falls as
/// the batch is learnt. Every forward and backward kernel of the network runs, so the browser
/// compares its WebGPU losses with the CPU backend's as a smoke test of the backward passes.
pub async fn smoke_losses<B: Backend>(backend: &B, steps: usize, batch: usize) -> Result<Vec<f32>> {
    const SEED: u64 = 7;
    let mut model = Model::new(backend, ModelConfig::original(), SEED)?;
    let data = data::synthetic(batch, SEED);
    let labels: Vec<u32> = data.labels.iter().map(|&l| u32::from(l)).collect();
    let augments = vec![warp::centre(model.input_side()); batch];
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let adam = AdamConfig { lr: 1e-3, ..AdamConfig::default() };
        let result = model.train_step_async(backend, &data.images, &augments, &labels, step as u32, adam, step as u64 + 1).await?;
        losses.push(result.loss);
    }
    Ok(losses)
}

/// Keras' 'balanced' class weights: total / (classes * count of the class).
pub fn balanced_class_weights(data: &Dataset) -> Vec<f32> {
    let counts = data.class_counts();
    counts.iter().map(|&c| data.len() as f32 / (counts.len() as f32 * c.max(1) as f32)).collect()
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn the_cosine_starts_at_lr_and_ends_near_min_lr() {
        let r = Recipe { epochs: 40, lr: 1e-3, min_lr: 0.0, ..Recipe::adam_recipe() };
        assert_eq!(r.cosine_lr(1), 1e-3);
        assert!((r.cosine_lr(21) - 5e-4).abs() < 1e-9);
        assert!(r.cosine_lr(40) < 2e-6 && r.cosine_lr(40) > 0.0);
    }

    #[test]
    fn the_warm_up_climbs_to_lr_and_the_cosine_then_ends_near_min_lr() {
        let r = Recipe { epochs: 30, lr: 0.1, min_lr: 1e-4, warmup_epochs: 5, ..Recipe::adam_recipe() };
        let lrs: Vec<f32> = (1..=30).map(|e| r.cosine_lr(e)).collect();
        assert!((lrs[0] - 0.02).abs() < 1e-9, "the first epoch trains at lr / warmup: {lrs:?}");
        assert!(lrs[..5].windows(2).all(|w| w[0] < w[1]), "the warm-up climbs: {lrs:?}");
        assert_eq!((lrs[4], lrs[5]), (0.1, 0.1), "the warm-up ends at lr, where the cosine starts");
        assert!(lrs[5..].windows(2).all(|w| w[1] < w[0]), "the cosine falls: {lrs:?}");
        assert!(lrs[29] > 1e-4 && lrs[29] < 1e-3, "the last epoch is near min_lr: {}", lrs[29]);
    }

    #[test]
    fn runs_saved_before_a_field_existed_resume_as_they_trained() {
        // The plateau rule, no label smoothing, Adam, no warm-up.
        let mut saved = serde_json::to_value(Recipe::plateau_recipe()).unwrap();
        let fields = saved.as_object_mut().unwrap();
        for field in ["schedule", "label_smoothing", "optimizer", "warmup_epochs"] {
            fields.remove(field);
        }
        assert_eq!(serde_json::from_value::<Recipe>(saved).unwrap(), Recipe::plateau_recipe());
    }

    #[test]
    fn an_sgd_recipe_survives_its_state_file() {
        let sgd = Recipe { optimizer: OptimizerChoice::Sgd(SgdSettings::default()), warmup_epochs: 3, ..Recipe::adam_recipe() };
        let text = serde_json::to_string(&sgd).unwrap();
        assert!(text.contains(r#""optimizer":{"sgd":{"momentum":0.9,"nesterov":true,"weight_decay":0.0005}}"#), "{text}");
        assert_eq!(serde_json::from_str::<Recipe>(&text).unwrap(), sgd);
    }
}
