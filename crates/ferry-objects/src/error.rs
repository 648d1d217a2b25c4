//! The error type of this crate's constructors and builders.
//!
//! Errors that happen while serving or receiving a download use ferry-core's vocabulary
//! instead: [`Produced::Error`](ferry_core::Produced::Error) for logical producer errors,
//! [`ProduceError`](ferry_core::ProduceError) for OS failures while producing, and
//! [`ConsumeError`](ferry_core::ConsumeError) on the receiving side.

use std::path::PathBuf;

/// Why an object or a consumer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectsError {
    /// An OS error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (names the path).
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A destination name that is empty, not a single path component, or would escape the
    /// target directory.
    #[error("invalid destination name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// The destination exists and overwriting was not asked for.
    #[error("destination {0} already exists (use overwrite(true) to replace it)")]
    DestinationExists(PathBuf),
    /// A kept `NAME.part` belongs to other content than the download pins (an older file of
    /// the same name, another ticket): refused before any byte is fetched.
    #[error("{why}; remove it, or discard it and start over (`discard_other_part`, `ferry get --force`)")]
    OtherContent {
        /// The part file.
        part: PathBuf,
        /// What it holds and what was pinned.
        why: String,
    },
    /// An option out of its allowed range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A tensor whose byte length does not match its dtype and shape, a duplicate name, ...
    #[error("invalid tensor {name:?}: {why}")]
    InvalidTensor {
        /// The tensor's name (empty when it has none yet).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A safetensors buffer or file that does not parse.
    #[error("malformed safetensors data ({context}): {source}")]
    Safetensors {
        /// Which data (a path or "buffer").
        context: String,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
}

impl ObjectsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
