//! One error type for the library, so every failure names the op or file it came from.

use std::path::{Path, PathBuf};
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

    /// Work over one of mien's own bounds (not the device's), which the same work in smaller
    /// parts may keep within; the message names the bound.
    #[error("{0}")]
    OverBound(String),

    #[error("{what}: {reason}")]
    Unsupported { what: String, reason: String },

    #[error("GPU error in {op}: {detail}")]
    Gpu { op: String, detail: String },

    /// A file that cannot be read or written, or whose contents are wrong, with the reason.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },

    /// A bad line of a text file (CSV, JSON), counted from 1.
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },

    /// A setting or argument that would make the work meaningless or unbounded, refused before
    /// any work starts.
    #[error("{0}")]
    Invalid(String),

    /// Training that cannot go on (a diverged loss), with where its last good state is.
    #[error("{0}")]
    Training(String),

    #[error("drawing on the image: {0}")]
    Draw(String),

    #[error(transparent)]
    Cascade(#[from] crate::detect::cascade::CascadeError),
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

/// Refuses a buffer of `room` elements that cannot hold the `needed` an op reads or writes
/// (for buffers that may be larger than one use of them).
pub fn check_room(op: &'static str, name: &str, room: usize, needed: usize) -> Result<()> {
    if room < needed {
        return Err(shape_err(op, format!("{name} has room for {room} elements, needs {needed}")));
    }
    Ok(())
}

/// Shorthand for a file error naming `path`.
pub fn file_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), reason: reason.into() }
}

/// At most `max` characters of `text`, marked when cut: error messages quote bad fields, and a
/// hostile field can be megabytes long.
pub fn quote_prefix(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}
