//! Face detection with OpenCV's Haar cascades.

pub mod cascade;
pub mod grey;
pub mod group;

pub use cascade::Cascade;
pub use group::{group_rectangles, Rect};
