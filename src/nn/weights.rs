//! Model tensors in safetensors files, named and shaped as a PyTorch `nn.Sequential` built from
//! the same layer list expects, so `model.load_state_dict(safetensors.torch.load_file(path))`
//! works. Files are written to a temporary name and renamed, so a run killed mid-write never
//! leaves a truncated file behind.

use super::backend::Backend;
use super::config::ModelConfig;
use super::model::{Model, Param, TensorKind};
use crate::error::{file_err, Result};
#[cfg(not(target_arch = "wasm32"))]
use safetensors::tensor::TensorView;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A weights file's metadata: the model config, training figures.
type Metadata = HashMap<String, String>;

/// A tensor as files store it: its name and its parameter.
struct Stored<'a, T> {
    name: String,
    param: &'a Param<T>,
    tensor: &'a T,
}

/// Which of a parameter's tensors to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Value,
    /// The optimizer's state, for resuming training exactly: Adam's first and second moments
    /// (`.adam_m`, `.adam_v`), or SGD's momentum in `.adam_m` beside an unused `.adam_v`.
    Moments,
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, format!("cannot create: {e}")))?;
        f.write_all(bytes).map_err(|e| file_err(&tmp, format!("cannot write: {e}")))?;
        f.sync_all().map_err(|e| file_err(&tmp, format!("cannot sync: {e}")))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, format!("cannot move {} here: {e}", tmp.display())))
}

/// One tensor as a file stores it: its name, PyTorch's shape and the values in that layout.
#[cfg(not(target_arch = "wasm32"))]
struct Exported {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl<B: Backend> Model<B> {
    /// The model a weights file's metadata declares, with the file's weights, for inference:
    /// its batch norms folded into the layers before them ([`Model::load_for_inference`]).
    /// `bytes` are the file's contents, and errors name it as `path`.
    pub fn from_weights(backend: &B, bytes: &[u8], path: &Path) -> Result<Self> {
        let mut model = Model::new(backend, config_of_bytes(bytes, path)?, 0)?;
        model.load_for_inference(backend, bytes, path)?;
        Ok(model)
    }

    /// The tensors of `part`, named as files store them, with their parameters: each
    /// parameter's value, or each trainable parameter's two moments.
    fn part_tensors(&self, part: Part) -> Vec<Stored<'_, B::Tensor>> {
        let stored = |name, param, tensor| Stored { name, param, tensor };
        self.params
            .iter()
            .flat_map(|p| match part {
                Part::Value => vec![stored(p.name.clone(), p, &p.value)],
                Part::Moments if p.kind == TensorKind::Trainable => vec![stored(format!("{}.adam_m", p.name), p, &p.m), stored(format!("{}.adam_v", p.name), p, &p.v)],
                Part::Moments => vec![],
            })
            .collect()
    }

    /// The model's tensors in PyTorch layout.
    #[cfg(not(target_arch = "wasm32"))]
    fn export(&self, backend: &B, part: Part) -> Result<Vec<Exported>> {
        self.refuse_folded("save")?;
        let mut out = Vec::new();
        for Stored { name, param: p, tensor } in self.part_tensors(part) {
            let data = backend.read(tensor)?;
            let data = if p.transposed { transpose(&data, p.shape[1], p.shape[0]) } else { data };
            out.push(Exported { name, shape: p.shape.clone(), data });
        }
        Ok(out)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, backend: &B, path: &Path, part: Part, metadata: HashMap<String, String>) -> Result<()> {
        let tensors = self.export(backend, part)?;
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|t| TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data)).map(|view| (t.name.clone(), view)))
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(path, e.to_string()))?;
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| file_err(path, e.to_string()))?;
        write_atomic(path, &bytes)
    }

    /// Loads tensors saved by [`Model::save`]; every tensor of `part` must be present with the
    /// model's shape and hold finite numbers only (a NaN would spread through every later
    /// result).
    pub fn load(&mut self, backend: &B, path: &Path, part: Part) -> Result<HashMap<String, String>> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        self.load_bytes(backend, &bytes, path, part)
    }

    /// [`Model::load`] from the file's contents; errors name the file as `path`.
    pub fn load_bytes(&mut self, backend: &B, bytes: &[u8], path: &Path, part: Part) -> Result<HashMap<String, String>> {
        let (values, metadata) = self.read_values(bytes, path, part)?;
        for (stored, data) in self.part_tensors(part).into_iter().zip(&values) {
            backend.write(stored.tensor, data)?;
        }
        Ok(metadata)
    }

    /// The weights of a file's contents for inference alone: each batch norm right after a
    /// convolution or dense layer is folded into it ([`Model::fold_batch_norms`]) before the
    /// weights reach the backend, and the model refuses to train or be saved.
    pub fn load_for_inference(&mut self, backend: &B, bytes: &[u8], path: &Path) -> Result<()> {
        let (values, _) = self.read_values(bytes, path, Part::Value)?;
        self.fold_into(backend, values)
    }

    /// Folds the batch norms of the weights the model holds, read back from the backend, as
    /// [`Model::load_for_inference`] does.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn fold_for_inference(&mut self, backend: &B) -> Result<()> {
        let values = self.params.iter().map(|p| backend.read(&p.value)).collect::<Result<Vec<_>>>()?;
        self.fold_into(backend, values)
    }

    /// Folds the batch norms of `values` (in `params` order) and gives the model the result.
    fn fold_into(&mut self, backend: &B, mut values: Vec<Vec<f32>>) -> Result<()> {
        self.fold_batch_norms(&mut values);
        for (p, data) in self.params.iter().zip(&values) {
            backend.write(&p.value, data)?;
        }
        Ok(())
    }

    /// The tensors of `part` in a file's contents, in the model's layout and `params` order
    /// (for each parameter its value, or its two moments), and the file's metadata. Every
    /// tensor must be present with the model's shape and hold finite numbers only (a NaN would
    /// spread through every later result).
    fn read_values(&self, bytes: &[u8], path: &Path, part: Part) -> Result<(Vec<Vec<f32>>, Metadata)> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| file_err(path, format!("not a valid safetensors file ({e}); was it cut off mid-write?")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| file_err(path, e.to_string()))?;
        let mut values = Vec::new();
        for Stored { name, param: p, .. } in self.part_tensors(part) {
            let view = file.tensor(&name).map_err(|_| file_err(path, format!("no tensor {name} (is it a checkpoint of a different model?)")))?;
            if view.dtype() != Dtype::F32 || view.shape() != p.shape.as_slice() {
                return Err(file_err(path, format!("tensor {name} is {:?} {:?}, the model needs F32 {:?}", view.dtype(), view.shape(), p.shape)));
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(file_err(path, format!("tensor {name} holds {} at element {i}; refusing weights that are not finite", data[i])));
            }
            values.push(if p.transposed { transpose(&data, p.shape[0], p.shape[1]) } else { data });
        }
        Ok((values, header.metadata().clone().unwrap_or_default()))
    }
}

/// The model config recorded in a weights file's metadata (bounded by
/// [`ModelConfig::from_json`] before any model is built from it).
pub fn config_of(path: &Path) -> Result<ModelConfig> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read the weights: {e}")))?;
    config_of_bytes(&bytes, path)
}

/// [`config_of`] from the file's contents; errors name the file as `path`.
pub fn config_of_bytes(bytes: &[u8], path: &Path) -> Result<ModelConfig> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| file_err(path, format!("not a safetensors file ({e})")))?;
    let text = header.metadata().as_ref().and_then(|m| m.get("model")).ok_or_else(|| file_err(path, "no model config in its metadata; pass --model"))?;
    ModelConfig::from_json(text, &path.display().to_string())
}
