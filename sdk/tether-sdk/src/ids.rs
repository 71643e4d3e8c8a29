//! Client-side checks of identifiers, mirroring the contract's rules so that
//! a bad id fails before it is sent.

/// Longest vehicle id the contract allows.
const MAX_VEHICLE_ID: usize = 64;
/// Longest idempotency key the contract allows.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks a vehicle id: 1 to 64 characters of `[A-Za-z0-9._:-]`, starting
/// with a letter or digit.
pub(crate) fn check_vehicle_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    let starts_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if id.is_empty() || id.len() > MAX_VEHICLE_ID || !starts_ok || !id.chars().all(ok_char) {
        return Err(format!(
            "vehicle id {id:?} is malformed: use 1 to {MAX_VEHICLE_ID} characters of \
             [A-Za-z0-9._:-], starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks an idempotency key: 1 to 128 printable ASCII characters.
pub(crate) fn check_idempotency_key(key: &str) -> Result<(), String> {
    let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable {
        return Err(format!(
            "idempotency key {key:?} is malformed: use 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_ids() {
        for ok in ["car-1", "VIN:WVW.123_4", "7", &"a".repeat(64)] {
            check_vehicle_id(ok).unwrap();
        }
        for bad in ["", "-car", ".hidden", "car/1", "car 1", "wagen-ü", &"a".repeat(65)] {
            assert!(check_vehicle_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn idempotency_keys() {
        check_idempotency_key("tap 1 @ 12:00").unwrap();
        check_idempotency_key(&"k".repeat(128)).unwrap();
        for bad in ["", "tab\there", "ключ", &"k".repeat(129)] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
