//! [`WriteOutcome`] and [`FieldOutcome`]: what became of a desired-state
//! write, per field.

use std::time::SystemTime;

use tether_proto::app::v1 as app;
use tether_proto::common::v1::FieldStatus;

/// The result of a `set_desired` call.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The vehicle's desired generation after the write.
    pub generation: u64,
    /// One outcome per field of the patch.
    pub fields: Vec<FieldOutcome>,
    /// True when tetherd answered a repeat of an earlier call (same
    /// idempotency key) with that call's outcome, changing nothing.
    pub replayed: bool,
}

impl WriteOutcome {
    /// Whether every field has `status` (true for no fields).
    pub fn all(&self, status: FieldStatus) -> bool {
        self.fields.iter().all(|f| f.status == status)
    }

    /// The outcome of the field at `path`, e.g. `"windows.front_left"`.
    pub fn field(&self, path: &str) -> Option<&FieldOutcome> {
        self.fields.iter().find(|f| f.path == path)
    }
}

/// Where one field of a write stands.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldOutcome {
    /// The field's path, e.g. `"windows.front_left"`.
    pub path: String,
    /// Its status (SUPERSEDED once a newer write replaced it).
    pub status: FieldStatus,
    /// The generation of the value this outcome is about.
    pub generation: u64,
    /// When the value expires; `None` for a standing state.
    pub expires_at: Option<SystemTime>,
    /// A machine-readable reason for REJECTED / FAILED / EXPIRED.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
}

impl From<app::FieldOutcome> for FieldOutcome {
    fn from(f: app::FieldOutcome) -> Self {
        FieldOutcome {
            status: FieldStatus::try_from(f.status).unwrap_or(FieldStatus::Unspecified),
            expires_at: f.expires_at.and_then(|t| SystemTime::try_from(t).ok()),
            path: f.path,
            generation: f.generation,
            reason: f.reason,
            message: f.message,
        }
    }
}

impl From<app::SetDesiredResponse> for WriteOutcome {
    fn from(r: app::SetDesiredResponse) -> Self {
        WriteOutcome {
            generation: r.generation,
            fields: r.fields.into_iter().map(FieldOutcome::from).collect(),
            replayed: r.replayed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn converts_and_queries() {
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let response = app::SetDesiredResponse {
            generation: 7,
            replayed: true,
            fields: vec![
                app::FieldOutcome {
                    path: "windows.front_left".into(),
                    status: FieldStatus::Applied as i32,
                    generation: 7,
                    expires_at: Some(expires.into()),
                    ..Default::default()
                },
                app::FieldOutcome {
                    path: "doors.lock".into(),
                    status: 99, // a status from a newer contract
                    generation: 7,
                    ..Default::default()
                },
            ],
        };
        let outcome = WriteOutcome::from(response);
        assert_eq!(outcome.generation, 7);
        assert!(outcome.replayed);
        let window = outcome.field("windows.front_left").unwrap();
        assert_eq!(window.status, FieldStatus::Applied);
        assert_eq!(window.expires_at, Some(expires));
        assert_eq!(outcome.field("doors.lock").unwrap().status, FieldStatus::Unspecified);
        assert!(outcome.field("trunk.lid").is_none());
        assert!(!outcome.all(FieldStatus::Applied));
        assert!(WriteOutcome { generation: 0, fields: vec![], replayed: false }.all(FieldStatus::Applied));
    }
}
