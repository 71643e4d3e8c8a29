//! The stream's subjects: one token per vehicle id and per idempotency key,
//! escaped so that any id or key the API accepts is one subject token.
//!
//! `<prefix>.rec.<vehicle>` holds a vehicle's record (rollup: the last one
//! counts), `<prefix>.key.<vehicle>.<key>` each idempotency key (an empty
//! body is a deleted key), `<prefix>.audit.<vehicle>` the audit trail,
//! `<prefix>.pres.<vehicle>` its presence claim, `<prefix>.node.<node>` a
//! node's lease, `<prefix>.meta.boot` the count of node starts.

/// What a subject of the stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// A vehicle's record.
    Record(String),
    /// One idempotency key of a vehicle.
    Key(String, String),
    /// An audit record of a vehicle.
    Audit(String),
    /// A vehicle's presence claim.
    Presence(String),
    /// A node's lease.
    Lease,
    /// Anything else (meta, or a subject of a newer version).
    Other,
}

/// The subjects under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `tether`).
    pub(super) fn new(prefix: &str) -> Self {
        Subjects { prefix: prefix.to_string() }
    }

    /// Every subject of the stream.
    pub(super) fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// Every record subject.
    pub(super) fn records(&self) -> String {
        format!("{}.rec.*", self.prefix)
    }

    /// Every key subject.
    pub(super) fn keys(&self) -> String {
        format!("{}.key.*.*", self.prefix)
    }

    /// Every node's lease.
    pub(super) fn leases(&self) -> String {
        format!("{}.node.*", self.prefix)
    }

    /// A node's lease.
    pub(super) fn lease(&self, node: &str) -> String {
        format!("{}.node.{}", self.prefix, token(node))
    }

    /// Every presence subject.
    pub(super) fn presences(&self) -> String {
        format!("{}.pres.*", self.prefix)
    }

    /// A vehicle's presence claim.
    pub(super) fn presence(&self, vehicle: &str) -> String {
        format!("{}.pres.{}", self.prefix, token(vehicle))
    }

    /// A vehicle's record.
    pub(super) fn record(&self, vehicle: &str) -> String {
        format!("{}.rec.{}", self.prefix, token(vehicle))
    }

    /// A vehicle's key.
    pub(super) fn key(&self, vehicle: &str, key: &str) -> String {
        format!("{}.key.{}.{}", self.prefix, token(vehicle), token(key))
    }

    /// A vehicle's audit trail.
    pub(super) fn audit(&self, vehicle: &str) -> String {
        format!("{}.audit.{}", self.prefix, token(vehicle))
    }

    /// The count of node starts.
    pub(super) fn boot(&self) -> String {
        format!("{}.meta.boot", self.prefix)
    }

    /// What `subject` holds.
    pub(super) fn kind(&self, subject: &str) -> Kind {
        let Some(rest) = subject.strip_prefix(&self.prefix).and_then(|r| r.strip_prefix('.')) else {
            return Kind::Other;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let decoded = |t: &str| untoken(t);
        match parts.as_slice() {
            ["rec", v] => decoded(v).map_or(Kind::Other, Kind::Record),
            ["key", v, k] => match (decoded(v), decoded(k)) {
                (Some(v), Some(k)) => Kind::Key(v, k),
                _ => Kind::Other,
            },
            ["audit", v] => decoded(v).map_or(Kind::Other, Kind::Audit),
            ["pres", v] => decoded(v).map_or(Kind::Other, Kind::Presence),
            ["node", _] => Kind::Lease,
            _ => Kind::Other,
        }
    }
}

/// `s` as one subject token: ASCII letters, digits, `_` and `-` as they are,
/// every other byte as `~` and two hex digits.
pub(super) fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
    out
}

/// The string `token` made `t`, or `None` if `t` is not one.
pub(super) fn untoken(t: &str) -> Option<String> {
    let bytes = t.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_keys_round_trip_as_single_tokens() {
        let s = Subjects::new("tether");
        for (vehicle, key) in [("car-1", "k1"), ("fleet:eu.car_9", "a.b*c>d~e f"), ("WVW1234567", "~7e")] {
            let subject = s.key(vehicle, key);
            assert_eq!(subject.split('.').count(), 4, "{subject}");
            assert!(!subject.contains(['*', '>', ' ']), "{subject}");
            assert_eq!(s.kind(&subject), Kind::Key(vehicle.into(), key.into()));
            assert_eq!(s.kind(&s.record(vehicle)), Kind::Record(vehicle.into()));
            assert_eq!(s.kind(&s.audit(vehicle)), Kind::Audit(vehicle.into()));
            assert_eq!(s.kind(&s.presence(vehicle)), Kind::Presence(vehicle.into()));
        }
        assert_eq!(s.kind("tether.meta.boot"), Kind::Other);
        assert_eq!(s.kind("other.rec.car"), Kind::Other);
        assert_eq!(untoken("~zz"), None);
    }
}
