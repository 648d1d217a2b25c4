//! How a command ends: the exit codes of `ferry` and the one-line error that goes with them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the transfer failed (sender unreachable or gone, receiver failed, timeout, integrity) |
//! | 2 | usage or input error (bad ticket, missing path, destination exists, TLS files) |
//! | 130 | interrupted (Ctrl-C / SIGTERM); the transfer was cancelled cleanly |

use std::fmt;
use std::process::ExitCode;

/// Why a command failed, with the message to print (one line: what happened; what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The transfer itself failed (exit 1).
    Transfer(String),
    /// The command line or its inputs are wrong (exit 2).
    Usage(String),
    /// Cancelled by a signal (exit 130).
    Interrupted(String),
}

impl Failure {
    /// A transfer failure.
    pub fn transfer(msg: impl Into<String>) -> Self {
        Self::Transfer(msg.into())
    }

    /// A usage or input error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::Transfer(_) => 1,
            Self::Usage(_) => 2,
            Self::Interrupted(_) => 130,
        }
    }

    /// The exit code as std wants it.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Transfer(m) | Self::Usage(m) | Self::Interrupted(m) => m,
        }
    }

    /// `"transfer"`, `"usage"` or `"interrupted"` (the `kind` of the JSON error object).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transfer(_) => "transfer",
            Self::Usage(_) => "usage",
            Self::Interrupted(_) => "interrupted",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Multi-line causes would break the one-line promise; fold them.
        let one_line: String = self
            .message()
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        f.write_str(&one_line)
    }
}

impl std::error::Error for Failure {}

/// An OS error without the "(os error N)" noise.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The result of a command.
pub type CmdResult<T = ()> = Result<T, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_one_line() {
        assert_eq!(Failure::transfer("x").code(), 1);
        assert_eq!(Failure::usage("x").code(), 2);
        assert_eq!(Failure::Interrupted("x".into()).code(), 130);
        assert_eq!(
            Failure::transfer("a\n  b\r\n\nc").to_string(),
            "a b c",
            "errors print on one line"
        );
    }
}
