//! Face detection: OpenCV's Haar cascades, and the YuNet CNN (`yunet`).

#[cfg(feature = "plot")]
pub mod annotate;
pub mod cascade;
pub mod cpu;
pub mod gpu;
pub mod grey;
pub mod group;
pub mod yunet;

pub use cascade::Cascade;
pub use cpu::{detect_multi_scale, DetectParams};
pub use group::{group_rectangles, Rect};
