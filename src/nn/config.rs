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

/// Bounds on a model config, far above any expression model: what one process may allocate
/// without risk.
pub const MAX_PARAMETERS: usize = 200_000_000;
pub const MAX_ACTIVATIONS: usize = 1 << 26;
const MAX_LAYERS: usize = 512;
const MAX_SIDE: usize = 4096;
const MAX_WIDTH: usize = 8192;
const MAX_UNITS: usize = 1 << 20;

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
            Some(LayerSpec::Dense { units }) if *units == config.classes => {}
            _ => return Err(shape_err("model config", format!("{origin}: the last layer must be a dense layer with {} units (one per class)", config.classes))),
        }
        config.check_bounds().map_err(|e| shape_err("model config", format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// Follows the shapes through the layers with checked arithmetic and refuses a model
    /// larger than [`MAX_PARAMETERS`] or [`MAX_ACTIVATIONS`], before anything is allocated: a
    /// config can come from a weights file's metadata, and a hostile one must not abort the
    /// process on a huge allocation.
    fn check_bounds(&self) -> std::result::Result<(), String> {
        let [mut c, mut h, mut w] = self.input;
        if self.layers.len() > MAX_LAYERS {
            return Err(format!("{} layers, more than {MAX_LAYERS}", self.layers.len()));
        }
        if !(1..=MAX_SIDE).contains(&h) || !(1..=MAX_SIDE).contains(&w) || !(1..=MAX_WIDTH).contains(&c) {
            return Err(format!("input {:?} outside 1..={MAX_WIDTH} channels and 1..={MAX_SIDE} pixels a side", self.input));
        }
        let too_big = || "sizes overflow".to_string();
        let mut parameters = 0usize;
        for (i, layer) in self.layers.iter().enumerate() {
            let (inputs, layer_parameters) = match *layer {
                LayerSpec::Conv2d { filters, kernel, padding } => {
                    if !(1..=MAX_WIDTH).contains(&filters) || kernel == 0 || kernel > h.min(w) {
                        return Err(format!("layer {i}: {filters} filters of {kernel}x{kernel} on {h}x{w} (1..={MAX_WIDTH} filters, kernel within the input)"));
                    }
                    if padding == PaddingSpec::Valid {
                        (h, w) = (h - kernel + 1, w - kernel + 1);
                    }
                    let weights = c.checked_mul(kernel * kernel).and_then(|n| n.checked_mul(filters)).ok_or_else(too_big)?;
                    c = filters;
                    (c, weights + filters)
                }
                LayerSpec::Dense { units } => {
                    let inputs = c.checked_mul(h).and_then(|n| n.checked_mul(w)).ok_or_else(too_big)?;
                    if !(1..=MAX_UNITS).contains(&units) {
                        return Err(format!("layer {i}: {units} units (1..={MAX_UNITS})"));
                    }
                    (c, h, w) = (units, 1, 1);
                    (inputs, inputs.checked_mul(units).and_then(|n| n.checked_add(units)).ok_or_else(too_big)?)
                }
                LayerSpec::MaxPool { size } => {
                    if size == 0 || size > h.min(w) {
                        return Err(format!("layer {i}: pooling of {size} on {h}x{w}"));
                    }
                    (h, w) = (h / size, w / size);
                    (c, 0)
                }
                LayerSpec::Dropout { rate } if !(0.0..1.0).contains(&rate) => return Err(format!("layer {i}: dropout rate {rate} outside [0, 1)")),
                LayerSpec::BatchNorm => (c, 4 * c),
                LayerSpec::Relu | LayerSpec::Dropout { .. } | LayerSpec::Flatten => (c, 0),
            };
            let activations = c.checked_mul(h).and_then(|n| n.checked_mul(w)).ok_or_else(too_big)?;
            if activations.max(inputs) > MAX_ACTIVATIONS {
                return Err(format!("layer {i}: {activations} values an image, more than {MAX_ACTIVATIONS}"));
            }
            parameters = parameters.checked_add(layer_parameters).ok_or_else(too_big)?;
            if parameters > MAX_PARAMETERS {
                return Err(format!("more than {MAX_PARAMETERS} parameters by layer {i}"));
            }
        }
        Ok(())
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::error::file_err(path, format!("cannot read: {e}")))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The model of the original report, shipped as data/models/original.json.
    pub fn original() -> Self {
        Self::from_json(include_str!("../../data/models/original.json"), "data/models/original.json").expect("shipped config is valid")
    }
}
