//! What went wrong, as scripts see it: every failure is one of these classes, and each class
//! has one exit code (listed in the top-level `--help`). gRPC status codes are mapped to a
//! class here and nowhere else.

use tonic_types::StatusExt as _;

/// Exit codes of `duijie` (documented in `--help`).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Unexpected failure: connection to the broker, I/O, an internal error of a service.
    pub const FAILURE: u8 = 1;
    /// Bad usage, or a file that cannot be read or is not a valid referral (clap uses 2 too).
    pub const USAGE: u8 = 2;
    /// A service refused the request (invalid argument, wrong state, not permitted, not found,
    /// not authenticated), or nothing matched.
    pub const REFUSED: u8 = 3;
    /// A service is unavailable or a wait timed out: retry later.
    pub const UNAVAILABLE: u8 = 4;
    /// The audit chain does not verify.
    pub const BROKEN: u8 = 5;
}

/// A failure with the exit code it ends the program with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or an invalid input file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Refused by a service, or nothing matched (exit 3).
    #[error("{0}")]
    Refused(String),
    /// Unavailable or timed out (exit 4).
    #[error("{0}")]
    Unavailable(String),
    /// The audit chain is broken (exit 5).
    #[error("{0}")]
    Broken(String),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Failure(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Refused(_) => exit::REFUSED,
            CliError::Unavailable(_) => exit::UNAVAILABLE,
            CliError::Broken(_) => exit::BROKEN,
            CliError::Failure(_) => exit::FAILURE,
        }
    }

    /// Classifies a gRPC status from a call described by `what` (e.g. "submitting the
    /// referral"). Field violations (google.rpc.BadRequest) are listed one per line, so the
    /// operator sees which field of the file to fix.
    pub fn from_status(what: &str, s: &tonic::Status) -> Self {
        use tonic::Code;
        let mut msg = format!("{what}: {} ({:?})", s.message(), s.code());
        if let Some(bad) = s.get_error_details().bad_request() {
            for v in &bad.field_violations {
                msg.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        match s.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::NotFound
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::OutOfRange => CliError::Refused(msg),
            // A service that cannot be reached shows as UNAVAILABLE too: retry later.
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => CliError::Unavailable(msg),
            _ => CliError::Failure(anyhow::anyhow!(msg)),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CliError::Unavailable(_))
    }
}

/// `Result` with a [`CliError`].
pub type CliResult<T> = Result<T, CliError>;

/// Turns a gRPC call's error into a [`CliError`] naming what was being done.
pub trait StatusContext<T> {
    /// Classifies the error of a call described by `what`.
    fn or_refused(self, what: &str) -> CliResult<T>;
}

impl<T> StatusContext<T> for Result<T, tonic::Status> {
    fn or_refused(self, what: &str) -> CliResult<T> {
        self.map_err(|s| CliError::from_status(what, &s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_exit_codes() {
        let code = |c| CliError::from_status("x", &tonic::Status::new(c, "m")).exit_code();
        assert_eq!(code(tonic::Code::InvalidArgument), exit::REFUSED);
        assert_eq!(code(tonic::Code::NotFound), exit::REFUSED);
        assert_eq!(code(tonic::Code::PermissionDenied), exit::REFUSED);
        assert_eq!(code(tonic::Code::FailedPrecondition), exit::REFUSED);
        assert_eq!(code(tonic::Code::Unauthenticated), exit::REFUSED);
        assert_eq!(code(tonic::Code::Unavailable), exit::UNAVAILABLE);
        assert_eq!(code(tonic::Code::DeadlineExceeded), exit::UNAVAILABLE);
        assert_eq!(code(tonic::Code::Internal), exit::FAILURE);
    }
}
