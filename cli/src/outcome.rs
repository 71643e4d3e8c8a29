//! Per-field outcomes of a write or a cancel, as a table for people or as
//! JSON for machines.

use std::time::SystemTime;

use tether_sdk::FieldOutcome;

use crate::output::{Table, status_name};
use crate::when;

/// The outcomes as an indented table: path, status, generation, expiry and
/// the reason with its message.
pub(crate) fn table(fields: &[FieldOutcome], now: SystemTime) -> String {
    let mut table = Table::new(&["PATH", "STATUS", "GEN", "EXPIRES", "REASON"]);
    for field in fields {
        table.row(vec![
            field.path.clone(),
            status_name(field.status as i32),
            field.generation.to_string(),
            expiry(field.expires_at, now),
            reason(&field.reason, &field.message),
        ]);
    }
    table.render("  ")
}

/// The outcomes as a JSON array.
pub(crate) fn json(fields: &[FieldOutcome]) -> serde_json::Value {
    fields
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path,
                "status": status_name(f.status as i32),
                "generation": f.generation,
                "expires_at": when::json(f.expires_at),
                "reason": f.reason,
                "message": f.message,
            })
        })
        .collect()
}

/// When a desired value expires: `in 4m 59s`, `expired 3s ago`, or `never`.
pub(crate) fn expiry(expires_at: Option<SystemTime>, now: SystemTime) -> String {
    match expires_at {
        None => "never".into(),
        Some(t) if t <= now => match when::relative(t, now) {
            ago if ago == "now" => "expired just now".into(),
            ago => format!("expired {ago}"),
        },
        Some(t) => when::relative(t, now),
    }
}

/// A machine-readable reason and its explanation, as one cell.
pub(crate) fn reason(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => reason.to_string(),
        (true, false) => message.to_string(),
        (false, false) => format!("{reason}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_sdk::FieldStatus;

    use super::*;

    #[test]
    fn renders_outcomes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let fields = vec![
            FieldOutcome {
                path: "windows.front_left".into(),
                status: FieldStatus::Applied,
                generation: 7,
                expires_at: Some(now + Duration::from_secs(299)),
                reason: String::new(),
                message: String::new(),
            },
            FieldOutcome {
                path: "doors.lock".into(),
                status: FieldStatus::Rejected,
                generation: 7,
                expires_at: None,
                reason: "precondition".into(),
                message: "only when parked".into(),
            },
        ];
        let text = table(&fields, now);
        assert!(text.contains("windows.front_left  APPLIED   7    in 4m 59s"), "{text}");
        assert!(text.contains("REJECTED  7    never      precondition: only when parked"), "{text}");
        let json = json(&fields);
        assert_eq!(json[1]["status"], "REJECTED");
        assert_eq!(json[1]["expires_at"], serde_json::Value::Null);
        assert_eq!(expiry(Some(now - Duration::from_secs(3)), now), "expired 3s ago");
        assert_eq!(expiry(Some(now), now), "expired just now");
    }
}
