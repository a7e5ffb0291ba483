//! mien: face detectors (YuNet and OpenCV's Haar cascades) and facial-expression CNNs whose
//! numeric kernels are hand-written WGSL compute shaders, with a fast CPU implementation of
//! each beside it; the host keeps only small sequential work such as non-maximum suppression.

pub mod align;
pub mod augment;
pub mod calibration;
pub mod data;
pub mod detect;
pub mod error;
pub mod gpu;
pub mod imageio;
pub mod kernels;
pub mod nn;
pub mod pipeline;
#[cfg(feature = "plot")]
pub mod plot;
pub mod rng;
pub mod suite;
pub mod track;
pub mod train;
#[cfg(feature = "video")]
pub mod video;

pub use error::{Error, Result};
#[cfg(feature = "cli")]
pub mod bench;
