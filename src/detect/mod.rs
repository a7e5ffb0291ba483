//! Face detection with OpenCV's Haar cascades.

pub mod cascade;

pub use cascade::Cascade;
