//! One error type for the library, so every failure names the op or file it came from.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),

    #[error("could not open the GPU device on {adapter}: {reason}")]
    Device { adapter: String, reason: String },

    #[error("{op}: bad shapes: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: {what} needs {bytes} bytes, over the device limit of {limit} bytes ({limit_name})")]
    TooLarge { op: &'static str, what: String, bytes: u64, limit: u64, limit_name: &'static str },

    #[error("{what}: {reason}")]
    Unsupported { what: String, reason: String },

    #[error("GPU error in {op}: {detail}")]
    Gpu { op: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a shape error; kernels check shapes before touching the GPU so that a mistake
/// becomes this message instead of a wgpu validation panic or a silent wrong answer.
pub fn shape_err(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Shape { op, detail: detail.into() }
}

/// Checks that `slice` holds `expected` elements.
pub fn check_len(op: &'static str, name: &str, slice_len: usize, expected: usize) -> Result<()> {
    if slice_len != expected {
        return Err(shape_err(op, format!("{name} has {slice_len} elements, expected {expected}")));
    }
    Ok(())
}
