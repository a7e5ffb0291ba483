//! Several expression models labelling together (`--weights a.safetensors,b.safetensors`):
//! each face gets the mean of the models' probabilities. Models trained apart make different
//! mistakes, so their mean is right more often than either alone, at the cost of running each.

use std::path::{Path, PathBuf};

use super::backend::Backend;
use super::model::{add_into, scale, Model};
use crate::augment::Tta;
use crate::error::{file_err, Error, Result};

/// One or more models with the same classes.
pub struct Ensemble<B: Backend> {
    models: Vec<Model<B>>,
}

impl<B: Backend> Ensemble<B> {
    /// The models as one, refused when there are none or their classes differ in number.
    pub fn new(models: Vec<Model<B>>) -> Result<Self> {
        let Some(first) = models.first() else {
            return Err(Error::Invalid("an ensemble needs at least one model".into()));
        };
        let classes = first.config.classes;
        if let Some((i, other)) = models.iter().enumerate().find(|(_, m)| m.config.classes != classes) {
            return Err(Error::Invalid(format!("ensemble model {} has {} classes, model 1 has {classes}", i + 1, other.config.classes)));
        }
        Ok(Ensemble { models })
    }

    /// The models of the weights files at `paths`, each built as its file's metadata declares.
    pub fn load(backend: &B, paths: &[PathBuf]) -> Result<Self> {
        let models = paths.iter().map(|path| Model::from_weights(backend, &read(path)?, path)).collect::<Result<Vec<_>>>()?;
        Self::new(models)
    }

    /// The number of classes every member scores.
    pub fn classes(&self) -> usize {
        self.models[0].config.classes
    }

    /// Keeps the first `n` models, and always the first.
    pub fn truncate(&mut self, n: usize) {
        self.models.truncate(n.max(1));
    }

    /// The models, to evaluate or set up.
    pub fn models_mut(&mut self) -> &mut [Model<B>] {
        &mut self.models
    }

    /// Class probabilities ([n, classes]) of `n` faces where the backend keeps them: for each
    /// model the mean over the views `tta` takes, then the mean over the models. Every model's
    /// views are queued before the first is read back.
    pub async fn predict_faces_async(&mut self, backend: &B, faces: &B::Faces, n: usize, tta: Tta) -> Result<Vec<f32>> {
        let queued = self.models.iter_mut().map(|m| m.queue_faces(backend, faces, n, tta)).collect::<Result<Vec<_>>>()?;
        let mut probs = vec![0.0; n * self.models[0].config.classes];
        for model in queued {
            add_into(&mut probs, &model.mean_async(backend).await?);
        }
        scale(&mut probs, self.models.len());
        Ok(probs)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| file_err(path, format!("cannot read the weights: {e}")))
}
