//! Why a download failed: [`DownloadFailure`], and the cleaning of a sender's error text
//! before it is kept in one.

use crate::{Refusal, ReturnCode};

/// Longest sender-provided error text kept in [`DownloadFailure::RequestFailed`], in bytes
/// (longer text is cut at a character boundary and marked with `…`).
pub const MAX_FAILURE_DETAIL: usize = 512;

/// Formats an optional detail as `": detail"` (nothing without one), for `Display`.
struct DetailSuffix<'a>(Option<&'a str>);

impl std::fmt::Display for DetailSuffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

/// Make a peer's error text safe to keep and print: control characters (terminal escapes,
/// newlines) become spaces, surrounding whitespace is trimmed, the result is capped to
/// [`MAX_FAILURE_DETAIL`] bytes; empty text is no text.
pub(super) fn sanitize_detail(text: &str) -> Option<String> {
    let cleaned: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return None;
    }
    if cleaned.len() <= MAX_FAILURE_DETAIL {
        return Some(cleaned.to_string());
    }
    const MARK: &str = "…";
    let mut cut = MAX_FAILURE_DETAIL - MARK.len();
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}{MARK}", cleaned[..cut].trim_end()))
}

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DownloadFailure {
    /// The producer answered `status: error`.
    #[error("producer error from {source_fqcn}")]
    ProducerError {
        /// The source.
        source_fqcn: String,
    },
    /// A request ended with a non-retryable return code.
    #[error("error requesting data from {source_fqcn}: {rc}{}", DetailSuffix(detail.as_deref()))]
    RequestFailed {
        /// The source.
        source_fqcn: String,
        /// The code.
        rc: ReturnCode,
        /// The sender's own words (the reply's `cn__error` text, e.g. "site-9 is not an
        /// expected receiver of R1"), when it gave any. It comes from a peer, so it is capped
        /// to [`MAX_FAILURE_DETAIL`] bytes and control characters are replaced (see
        /// [`Download::reply_error`](crate::Download::reply_error)).
        detail: Option<String>,
    },
    /// The producer refused the request and said why with a typed code (a ferry sender; an
    /// NVFlare sender's refusals are [`RequestFailed`](Self::RequestFailed) with
    /// `invalid_request`).
    #[error("{source_fqcn} refused the request ({refusal}){}", DetailSuffix(detail.as_deref()))]
    Refused {
        /// The source.
        source_fqcn: String,
        /// Why, as a code.
        refusal: Refusal,
        /// The sender's own words, sanitized and capped as for `RequestFailed`.
        detail: Option<String>,
    },
    /// A chunk timed out more than `max_retries` times in a row.
    #[error("no reply from {source_fqcn} after {attempts} attempts")]
    RetriesExhausted {
        /// The source.
        source_fqcn: String,
        /// Attempts made for the chunk.
        attempts: u32,
    },
    /// A reply could not be decoded or lacks required keys.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The producer's replies contradict the plan it advertised.
    #[error("producer diverged from its plan: {0}")]
    PlanMismatch(String),
    /// The consumer refused the plan.
    #[error("consumer refused the object: {0}")]
    PlanRefused(String),
    /// `consume` failed.
    #[error("exception when consuming data: {0}")]
    ConsumeFailed(String),
    /// A pipelined consumer returned another state than it was given.
    #[error("consumer changed state despite pipelining")]
    StateChanged,
    /// `completed` failed after EOF.
    #[error("download finalization failed: {0}")]
    CompletionFailed(String),
    /// The caller aborted.
    #[error("download aborted")]
    Aborted,
    /// The source was reported failed by its owner.
    #[error("{0}")]
    SourceFailed(String),
}
