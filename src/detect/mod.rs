//! Face detection with OpenCV's Haar cascades.

pub mod annotate;
pub mod cascade;
pub mod cpu;
pub mod gpu;
pub mod grey;
pub mod group;

pub use cascade::Cascade;
pub use cpu::{detect_multi_scale, DetectParams};
pub use group::{group_rectangles, Rect};
