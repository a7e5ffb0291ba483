//! Models are declared in small JSON files (`data/models/*.json`): a list of layers, so a deeper
//! network needs no code change. The last layer is a dense layer with one unit per class; the
//! softmax is part of the loss.

use crate::error::{shape_err, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSpec {
    #[default]
    Valid,
    Same,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Conv2d {
        filters: usize,
        kernel: usize,
        #[serde(default)]
        padding: PaddingSpec,
    },
    Relu,
    MaxPool {
        #[serde(default = "two")]
        size: usize,
    },
    Dropout {
        rate: f32,
    },
    BatchNorm,
    Flatten,
    Dense {
        units: usize,
    },
}

fn two() -> usize {
    2
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Channels, height, width of one input image.
    pub input: [usize; 3],
    pub classes: usize,
    pub layers: Vec<LayerSpec>,
}

impl ModelConfig {
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let config: ModelConfig = serde_json::from_str(text).map_err(|e| shape_err("model config", format!("{origin}: {e}")))?;
        match config.layers.last() {
            Some(LayerSpec::Dense { units }) if *units == config.classes => Ok(config),
            _ => Err(shape_err("model config", format!("{origin}: the last layer must be a dense layer with {} units (one per class)", config.classes))),
        }
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self::from_json(&text, &path.display().to_string())?)
    }

    /// The model of the original report, shipped as data/models/original.json.
    pub fn original() -> Self {
        Self::from_json(include_str!("../../data/models/original.json"), "data/models/original.json").expect("shipped config is valid")
    }
}
