//! Layers and models: the JSON model config, the backend trait the model runs on (CPU or GPU),
//! the sequential model with forward, backward and its optimizers, its safetensors files, and
//! ensembles of models.

pub mod backend;
pub mod config;
pub mod ensemble;
pub mod model;
pub mod weights;

pub use backend::{Backend, Cpu, GpuBackend};
pub use config::ModelConfig;
pub use ensemble::Ensemble;
pub use model::{BatchInFlight, Model, Optimizer};
