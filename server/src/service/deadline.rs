//! The caller's deadline, read from the `grpc-timeout` header (tetherd serves
//! without tonic's timeout layer, which would answer CANCELLED).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Parses `grpc-timeout` ("<up to 8 digits><H|M|S|m|u|n>").
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_garbage() {
        let mut m = MetadataMap::new();
        for (v, d) in
            [("5S", Duration::from_secs(5)), ("250m", Duration::from_millis(250)), ("2M", Duration::from_secs(120))]
        {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d));
        }
        for bad in ["S", "123456789S", "10x", "-1S"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&m), None, "{bad}");
        }
    }
}
