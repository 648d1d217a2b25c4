//! The one error enum of the `ferry` crate.

use ferry_core::DownloadFailure;

/// What can go wrong in the download service and the download client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The engine refused the call (unknown or reused transaction id, bad configuration, ...).
    #[error(transparent)]
    Engine(#[from] ferry_core::Error),
    /// The download failed; the reason says why (producer error, no reply after retries,
    /// consumer or integrity error, source failure, ...).
    #[error("download of {ref_id} from {source_fqcn} failed: {failure}")]
    Failed {
        /// The ref.
        ref_id: String,
        /// The source cell.
        source_fqcn: String,
        /// The engine's verdict.
        failure: DownloadFailure,
    },
    /// The download was cancelled by its caller.
    #[error("download of {ref_id} cancelled")]
    Cancelled {
        /// The ref.
        ref_id: String,
    },
    /// A message that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The service has been shut down.
    #[error("download service is shut down")]
    ShutDown,
    /// A local object or consumer could not be built (ferry-objects): the destination
    /// exists, its name is unsafe, a file cannot be opened or created, an option is out of
    /// range, a tensor dict is invalid, ... Match on the [`ObjectsError`] to tell them apart;
    /// its message names the path.
    ///
    /// [`ObjectsError`]: ferry_objects::ObjectsError
    #[error(transparent)]
    Objects(#[from] ferry_objects::ObjectsError),
    /// A set's manifest (verified against its ticket) lists members this receiver refuses:
    /// names that escape the output directory or clash, unknown kinds, ... See
    /// [`crate::manifest`].
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// Any other local problem (a consumer lost or that returned no data, a bad argument).
    #[error("{0}")]
    Local(String),
    /// A relay cannot start, or failed: it lost every upstream source (each named with what
    /// happened), the content did not match the ticket, or it was closed. See
    /// [`crate::relay`].
    #[error("relay: {0}")]
    Relay(String),
}

impl DownloadError {
    /// The engine's failure, if this is a failed download.
    pub fn failure(&self) -> Option<&DownloadFailure> {
        match self {
            Self::Failed { failure, .. } => Some(failure),
            _ => None,
        }
    }
}
