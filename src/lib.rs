//! mien: a facial-expression CNN and a Haar-cascade face detector whose every numeric kernel is
//! a hand-written WGSL compute shader, with a fast CPU implementation of each beside it.

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
