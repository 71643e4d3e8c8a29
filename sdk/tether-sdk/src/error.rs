//! [`Error`]: what can go wrong in a call of the app client.

/// An error from the app client.
///
/// Statuses from tetherd are kept whole in [`Error::Status`], so callers can
/// branch on [`Error::code`] the way they would with any gRPC client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tetherd (or the transport under it) answered with this status.
    #[error("tetherd answered {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The connection could not be made (a refused or timed-out connect).
    #[error("cannot connect to tetherd: {}", chain(.0))]
    Transport(tonic::transport::Error),
    /// The request was refused before it was sent; the message says why.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Local I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The status tetherd answered with, if this error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of this error: the status's code, or `InvalidArgument`
    /// for a request refused before it was sent (the same code tetherd would
    /// have answered). `None` for transport and I/O errors.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::InvalidArgument(_) => Some(tonic::Code::InvalidArgument),
            Error::Transport(_) | Error::Io(_) => None,
        }
    }
}

// By hand rather than `#[from]`: tonic's transport error says only
// "transport error" and keeps the reason in its sources, which the message
// above already shows.
impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Transport(error)
    }
}

/// An error and its sources, `a: b: c`, skipping a source that repeats its
/// parent's words.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if text != last && !last.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = inner.source();
    }
    out
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_status_and_its_code() {
        let err = Error::from(tonic::Status::aborted("generation moved"));
        assert_eq!(err.code(), Some(tonic::Code::Aborted));
        assert_eq!(err.status().map(|s| s.message()), Some("generation moved"));
        assert_eq!(err.to_string(), "tetherd answered Aborted: generation moved");

        let err = Error::InvalidArgument("empty patch".into());
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
        assert!(err.status().is_none());
    }
}
