//! The audit trail: one record per SetDesired and CancelDesired call that
//! names a valid vehicle and has an authenticated caller, accepted or refused,
//! and the paged read of a vehicle's trail.
//!
//! A record is `tether.app.v1.AuditRecord`, encoded, filed by the store under
//! its vehicle; the store assigns the sequence, which is filled in on reading.
//! An accepted write's record is committed with the write (`Hub::update_audited`);
//! a refusal's record is not waited for (a refused call costs no fsync).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;
use tether_proto::app::v1 as pb;

use super::convert::ts;
use super::status::ApiError;
use crate::hub::Hub;
use crate::store::AuditEntry;

const PAGE_TOKEN_PREFIX: &str = "before:";

/// A record being written for one call: what was asked, before the outcome.
#[derive(Debug, Clone)]
pub(crate) struct AuditDraft {
    record: pb::AuditRecord,
}

impl AuditDraft {
    /// A SetDesired call by `subject`.
    pub(crate) fn set_desired(subject: &str, req: &pb::SetDesiredRequest, traceparent: &str) -> Self {
        AuditDraft {
            record: pb::AuditRecord {
                vehicle_id: req.vehicle_id.clone(),
                subject: subject.to_string(),
                action: pb::AuditAction::SetDesired as i32,
                idempotency_key: req.idempotency_key.clone(),
                patch: req.patch.clone(),
                ttl: req.ttl,
                no_expiry: req.no_expiry,
                expected_generation: req.expected_generation,
                require_online: req.require_online,
                traceparent: traceparent.to_string(),
                ..Default::default()
            },
        }
    }

    /// A CancelDesired call by `subject`.
    pub(crate) fn cancel(subject: &str, req: &pb::CancelDesiredRequest) -> Self {
        AuditDraft {
            record: pb::AuditRecord {
                vehicle_id: req.vehicle_id.clone(),
                subject: subject.to_string(),
                action: pb::AuditAction::CancelDesired as i32,
                paths: req.paths.clone(),
                ..Default::default()
            },
        }
    }

    /// The leaf paths the call named, once known.
    pub(crate) fn set_paths(&mut self, paths: impl IntoIterator<Item = impl Into<String>>) {
        self.record.paths = paths.into_iter().map(Into::into).collect();
    }

    /// The record of an accepted (or replayed) call at `generation`.
    pub(crate) fn accepted(self, generation: u64, replayed: bool) -> AuditEntry {
        let outcome = if replayed { pb::AuditOutcome::Replayed } else { pb::AuditOutcome::Accepted };
        finish(pb::AuditRecord { outcome: outcome as i32, generation, ..self.record })
    }

    /// The record of a refused call: the code and message the caller gets.
    pub(crate) fn refused(self, error: &ApiError) -> AuditEntry {
        finish(pb::AuditRecord {
            outcome: pb::AuditOutcome::Refused as i32,
            code: error.code() as i32,
            message: error.to_string(),
            ..self.record
        })
    }
}

/// The entry of a decided call, stamped now.
fn finish(mut record: pb::AuditRecord) -> AuditEntry {
    let at = SystemTime::now();
    record.recorded_at = Some(ts(at));
    AuditEntry { vehicle: Arc::from(record.vehicle_id.as_str()), at, record: Bytes::from(record.encode_to_vec()) }
}

/// Files a refusal that was decided without a vehicle's lock; not waited for.
pub(crate) fn file_refusal(hub: &Hub, draft: AuditDraft, error: &ApiError) {
    drop(hub.store().audit(draft.refused(error)));
}

/// A page of `vehicle`'s trail, newest first. Reads the store on a blocking
/// thread: a page is at most 1000 records.
pub(crate) async fn page(
    hub: &Arc<Hub>,
    vehicle: &str,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListAuditRecordsResponse, ApiError> {
    let size = super::page_size(page_size)?;
    let before = if page_token.is_empty() {
        None
    } else {
        let seq = page_token
            .strip_prefix(PAGE_TOKEN_PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| ApiError::InvalidArgument("malformed page_token: pass next_page_token unchanged".into()))?;
        Some(seq)
    };
    let store = hub.store().clone();
    let vehicle_id = vehicle.to_string();
    let rows = tokio::task::spawn_blocking(move || store.audit_page(&vehicle_id, before, size + 1))
        .await
        .map_err(|e| crate::store::StoreError::new(format!("audit read task: {e}")))??;
    let more = rows.len() > size;
    let mut records = Vec::with_capacity(rows.len().min(size));
    let mut last = None;
    for (sequence, bytes) in rows.into_iter().take(size) {
        last = Some(sequence);
        match pb::AuditRecord::decode(bytes) {
            Ok(record) => records.push(pb::AuditRecord { sequence, ..record }),
            Err(e) => tracing::error!(vehicle, sequence, error = %e, "stored audit record does not decode; skipped"),
        }
    }
    let next_page_token = match (more, last) {
        (true, Some(last)) => format!("{PAGE_TOKEN_PREFIX}{last}"),
        _ => String::new(),
    };
    Ok(pb::ListAuditRecordsResponse { records, next_page_token })
}
