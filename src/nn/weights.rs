//! Model tensors in safetensors files, named and shaped as a PyTorch `nn.Sequential` built from
//! the same layer list expects, so `model.load_state_dict(safetensors.torch.load_file(path))`
//! works. Files are written to a temporary name and renamed, so a run killed mid-write never
//! leaves a truncated file behind.

use super::backend::Backend;
use super::model::{Model, TensorKind};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Which of a parameter's tensors to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Value,
    /// Adam's first and second moments, for resuming training exactly.
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
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
        f.sync_all().with_context(|| format!("{}: cannot sync", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

impl<B: Backend> Model<B> {
    /// The model's tensors in PyTorch layout: (name, shape, data).
    fn export(&self, backend: &B, part: Part) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let mut out = Vec::new();
        for p in &self.params {
            let torch = |data: Vec<f32>| if p.transposed { transpose(&data, p.shape[1], p.shape[0]) } else { data };
            match part {
                Part::Value => out.push((p.name.clone(), p.shape.clone(), torch(backend.read(&p.value)?))),
                Part::Moments if p.kind == TensorKind::Trainable => {
                    out.push((format!("{}.adam_m", p.name), p.shape.clone(), torch(backend.read(&p.m)?)));
                    out.push((format!("{}.adam_v", p.name), p.shape.clone(), torch(backend.read(&p.v)?)));
                }
                Part::Moments => {}
            }
        }
        Ok(out)
    }

    pub fn save(&self, backend: &B, path: &Path, part: Part, metadata: HashMap<String, String>) -> Result<()> {
        let tensors = self.export(backend, part)?;
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))?)))
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        write_atomic(path, &bytes)
    }

    /// Loads tensors saved by [`Model::save`]; every tensor of `part` must be present with the
    /// model's shape.
    pub fn load(&mut self, backend: &B, path: &Path, part: Part) -> Result<HashMap<String, String>> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a valid safetensors file ({e}); was it cut off mid-write?", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for p in &self.params {
            let targets: Vec<(String, &B::Tensor)> = match part {
                Part::Value => vec![(p.name.clone(), &p.value)],
                Part::Moments if p.kind == TensorKind::Trainable => vec![(format!("{}.adam_m", p.name), &p.m), (format!("{}.adam_v", p.name), &p.v)],
                Part::Moments => vec![],
            };
            for (name, tensor) in targets {
                let view = file.tensor(&name).map_err(|_| anyhow!("{}: no tensor {name} (is it a checkpoint of a different model?)", path.display()))?;
                if view.dtype() != Dtype::F32 || view.shape() != p.shape.as_slice() {
                    bail!("{}: tensor {name} is {:?} {:?}, the model needs F32 {:?}", path.display(), view.dtype(), view.shape(), p.shape);
                }
                let data: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let data = if p.transposed { transpose(&data, p.shape[0], p.shape[1]) } else { data };
                backend.write(tensor, &data)?;
            }
        }
        Ok(header.metadata().clone().unwrap_or_default())
    }
}
