//! The library's one error type. Every variant names the thing that was wrong (a path, a tensor,
//! a field, a value) so that a user reading the message knows what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is written into the message and deliberately not exposed as `source()`: callers
    // print errors with their chain (`{err:#}`), and a cause in both places is printed twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: not valid JSON for {what}: {cause}")]
    Json {
        path: PathBuf,
        what: &'static str,
        cause: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("tensor `{name}` in {path}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tensor `{name}` is missing from {path}")]
    TensorMissing { path: PathBuf, name: String },

    #[error("invalid config {field}: {message}")]
    Config { field: String, message: String },

    #[error("{path}: cannot read image: {message}")]
    Image { path: PathBuf, message: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{0}")]
    InvalidInput(String),

    #[error("data: {0}")]
    Data(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    /// A config error restated about the file it was read from, so the message names the file.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Error::Config { field, message } => Error::Checkpoint {
                path: path.into(),
                message: format!("invalid {field}: {message}"),
            },
            other => other,
        }
    }

    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
