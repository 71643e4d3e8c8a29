//! Renderings of times and durations: RFC 3339 for machines, "in 4m 58s" and
//! "3s ago" for people. Nothing here reads the clock; callers pass `now`.

use std::time::{Duration, SystemTime};

/// A protobuf timestamp as a `SystemTime`, if present and representable.
pub(crate) fn from_pb(timestamp: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|t| SystemTime::try_from(*t).ok())
}

/// RFC 3339 in UTC, to the second (for people).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// RFC 3339 in UTC with the timestamp's own precision (for machines), or null.
pub(crate) fn json(time: Option<SystemTime>) -> serde_json::Value {
    match time {
        Some(time) => prost_types::Timestamp::from(time).to_string().into(),
        None => serde_json::Value::Null,
    }
}

/// A compact duration: `312ms` below a second, whole seconds above
/// (`12s`, `4m 58s`, `2h 1m 5s`).
pub(crate) fn span(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// `time` relative to `now`: `in 4m 58s`, `3s ago` or `now`.
pub(crate) fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) if ahead >= Duration::from_secs(1) => format!("in {}", span(ahead)),
        Ok(_) => "now".to_string(),
        Err(behind) if behind.duration() >= Duration::from_secs(1) => format!("{} ago", span(behind.duration())),
        Err(_) => "now".to_string(),
    }
}

/// `time` as RFC 3339 followed by its distance from `now`:
/// `2030-01-01T00:00:00Z (in 3s)`.
pub(crate) fn absolute_and_relative(time: SystemTime, now: SystemTime) -> String {
    format!("{} ({})", rfc3339(time), relative(time, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_relative_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert_eq!(span(Duration::from_millis(312)), "312ms");
        assert_eq!(span(Duration::from_millis(298_400)), "4m 58s");
        assert_eq!(relative(now + Duration::from_secs(298), now), "in 4m 58s");
        assert_eq!(relative(now - Duration::from_secs(3), now), "3s ago");
        assert_eq!(relative(now + Duration::from_millis(200), now), "now");
        assert_eq!(rfc3339(now), "2030-03-17T17:46:40Z");
        assert_eq!(json(Some(now + Duration::from_millis(5))), "2030-03-17T17:46:40.005Z");
        assert_eq!(json(None), serde_json::Value::Null);
    }
}
