//! Every error a caller can cause, and its gRPC status: the one place where
//! domain errors become `tonic::Status`. Messages say what the caller did
//! wrong and never leak internals.

use tether_proto::FieldError;
use tonic::{Code, Status};

use crate::core::WriteError;
use crate::store::StoreError;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed vehicle id.
    #[error("invalid vehicle id {0:?}: use 1 to 64 characters of [A-Za-z0-9._:-], starting with a letter or digit")]
    InvalidVehicleId(String),
    /// Any other malformed argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// A state field that is malformed, unknown or out of its rules.
    #[error("invalid state: {0}")]
    Field(#[from] FieldError),
    /// A write refused by the command semantics.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A connection authenticated as one vehicle tried to act as another.
    #[error("this connection's certificate is for vehicle {certificate:?}; it may not act as {hello:?}")]
    WrongVehicle {
        /// The vehicle the certificate names.
        certificate: String,
        /// The vehicle the message named.
        hello: String,
    },
    /// The principal lacks a scope.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's credentials expired during a stream.
    #[error("{0}")]
    Unauthenticated(String),
    /// A write rate limit was reached; nothing changed.
    #[error("write rate limit of {} reached ({}/s, burst {}); retry after {} ms", .0.what, .0.rate.per_second, .0.rate.burst, .0.retry_after.as_millis().max(1))]
    RateLimited(crate::limits::Limited),
    /// The vehicle is unknown.
    #[error("vehicle {0:?} is unknown: it has never connected nor been written to")]
    NotFound(String),
    /// `require_online` and the vehicle is offline.
    #[error("vehicle {0:?} is offline (require_online was set); nothing was changed")]
    Offline(String),
    /// The wait level was not reached in time; the state stays stored.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The node is shutting down.
    #[error("tetherd is shutting down; {0}")]
    ShuttingDown(String),
    /// Storage failed; details are logged, not returned. Nothing the call
    /// asked for was stored (a refused save is rolled back in memory too).
    #[error(
        "storage is unavailable (a full or failing disk): nothing was stored; retry later, a write with the same idempotency key"
    )]
    Store(#[from] StoreError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        if let ApiError::RateLimited(limited) = &e {
            // gRPC's retry pushback, in milliseconds, for clients that honour it.
            let mut metadata = tonic::metadata::MetadataMap::new();
            let ms = limited.retry_after.as_millis().max(1).to_string();
            if let Ok(value) = ms.parse() {
                metadata.insert("grpc-retry-pushback-ms", value);
            }
            return Status::with_metadata(Code::ResourceExhausted, e.to_string(), metadata);
        }
        if let ApiError::Store(inner) = &e {
            tracing::error!(error = %inner, "storage failure");
        }
        Status::new(e.code(), e.to_string())
    }
}

impl ApiError {
    /// The gRPC code the caller receives.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidVehicleId(_) | ApiError::InvalidArgument(_) | ApiError::Field(_) => Code::InvalidArgument,
            ApiError::Write(WriteError::KeyReused { .. }) => Code::AlreadyExists,
            ApiError::Write(WriteError::GenerationMismatch { .. }) => Code::Aborted,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::WrongVehicle { .. } | ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Offline(_) | ApiError::ShuttingDown(_) | ApiError::Store(_) => Code::Unavailable,
            ApiError::RateLimited(_) => Code::ResourceExhausted,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }
}
