//! Layers and models: the JSON model config, the backend trait the model runs on (CPU or GPU),
//! the sequential model with forward, backward and its optimizers, and its safetensors files.

pub mod backend;
pub mod config;
pub mod model;
pub mod weights;

pub use backend::{Backend, Cpu, GpuBackend};
pub use config::ModelConfig;
pub use model::{BatchInFlight, Model, Optimizer};
