//! Unit tests of value parsing and rendering, against the embedded contract.

use std::time::{Duration, SystemTime};

use prost_reflect::Value;
use tether_sdk::pb::StateSchema;
use tether_sdk::pb::fields::timestamp_of;

use super::*;

/// 2030-03-17T17:46:40Z.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn parse(arg: &str) -> Result<Value, String> {
    let schema = StateSchema::contract();
    parse_assignment(&schema, arg, now()).map(|f| f.value).map_err(|e| e.to_string())
}

#[test]
fn booleans() {
    for (text, expected) in [("true", true), ("on", true), ("ON", true), ("false", false), ("off", false)] {
        assert_eq!(parse(&format!("climate.on={text}")), Ok(Value::Bool(expected)), "{text}");
    }
    let err = parse("climate.on=yes").unwrap_err();
    assert!(err.starts_with("climate.on: "), "{err}");
    assert!(err.contains("true, false, on or off"), "{err}");
}

#[test]
fn integers_within_their_rules() {
    assert_eq!(parse("windows.front_left=0"), Ok(Value::U32(0)));
    assert_eq!(parse("windows.front_left= 100 "), Ok(Value::U32(100)));
    let err = parse("windows.front_left=101").unwrap_err();
    assert!(err.contains("windows.front_left") && err.contains("above the maximum 100"), "{err}");
    assert!(err.contains("an integer from 0 to 100"), "{err}");
    let err = parse("charging.limit_percent=49").unwrap_err();
    assert!(err.contains("below the minimum 50") && err.contains("from 50 to 100"), "{err}");
    assert!(parse("windows.front_left=-1").unwrap_err().contains("windows.front_left"));
    assert!(parse("windows.front_left=half").unwrap_err().contains("not an integer"));
    assert!(parse("windows.front_left=4294967296").unwrap_err().contains("out of range"));
}

#[test]
fn floats_within_their_rules() {
    assert_eq!(parse("climate.target_temperature_celsius=21.5"), Ok(Value::F32(21.5)));
    assert_eq!(parse("climate.target_temperature_celsius=15"), Ok(Value::F32(15.0)));
    let err = parse("climate.target_temperature_celsius=30.5").unwrap_err();
    assert!(err.contains("above the maximum 30") && err.contains("a number from 15 to 30"), "{err}");
    assert!(parse("climate.target_temperature_celsius=NaN").unwrap_err().contains("finite"));
    assert!(parse("climate.target_temperature_celsius=warm").unwrap_err().contains("not a number"));
}

#[test]
fn enums_by_any_name_form_or_number() {
    for text in ["LOCK_STATE_LOCKED", "LOCKED", "locked", "Lock_State_Locked", "1"] {
        assert_eq!(parse(&format!("doors.lock={text}")), Ok(Value::EnumNumber(1)), "{text}");
    }
    assert_eq!(parse("trunk.lid=closed"), Ok(Value::EnumNumber(2)));
    let err = parse("doors.lock=ajar").unwrap_err();
    assert!(err.contains("doors.lock") && err.contains("LOCKED or UNLOCKED"), "{err}");
    assert!(err.contains("LOCK_STATE_LOCKED"), "{err}");
    for zero in ["0", "unspecified", "LOCK_STATE_UNSPECIFIED"] {
        let err = parse(&format!("doors.lock={zero}")).unwrap_err();
        assert!(err.contains("means unset"), "{zero}: {err}");
    }
    assert!(parse("doors.lock=7").unwrap_err().contains("not a value of LockState"));
}

#[test]
fn timestamps_from_now_or_rfc3339() {
    let at = |arg: &str| parse(arg).map(|v| timestamp_of(&v).expect("a timestamp"));
    assert_eq!(at("horn.sound_until=+10s"), Ok(now() + Duration::from_secs(10)));
    assert_eq!(at("lights.flash_until=+1m"), Ok(now() + Duration::from_secs(60)));
    // 19:47:00+02:00 is 17:47:00Z, 20 s after `now`.
    assert_eq!(at("horn.sound_until=2030-03-17T19:47:00+02:00"), Ok(now() + Duration::from_secs(20)));
    assert_eq!(at("horn.sound_until=2030-03-17T17:46:45.5Z"), Ok(now() + Duration::from_millis(5500)));

    let err = at("horn.sound_until=+1h").unwrap_err();
    assert!(err.contains("horn.sound_until") && err.contains("at most 30s"), "{err}");
    assert!(err.contains("+10s") && err.contains("RFC 3339"), "{err}");
    assert!(at("horn.sound_until=2030-03-17T17:00:00Z").unwrap_err().contains("future"));
    assert!(at("horn.sound_until=soon").unwrap_err().contains("not a time"));
    assert!(at("horn.sound_until=+forever").unwrap_err().contains("horn.sound_until"));
}

#[test]
fn malformed_arguments_say_what_is_accepted() {
    let err = parse("windows.front_left").unwrap_err();
    assert!(err.contains("is not PATH=VALUE") && err.contains("windows.front_left"), "{err}");
    let err = parse("windows.front=3").unwrap_err();
    assert!(err.contains("unknown field path `windows.front`"), "{err}");
    assert!(err.contains("windows.front_left") && err.contains("doors.lock"), "{err}");
}

#[test]
fn parsed_fields_join_into_a_state() {
    let schema = StateSchema::contract();
    let fields: Vec<_> = ["windows.front_left=30", "doors.lock=unlocked", "climate.on=off"]
        .iter()
        .map(|arg| parse_assignment(&schema, arg, now()).unwrap())
        .collect();
    let raw = StateSchema::join(fields.iter().map(|f| &f.encoded));
    let state = raw.decode_typed().unwrap();
    assert_eq!(state.windows.unwrap().front_left, Some(30));
    assert_eq!(state.doors.unwrap().lock, Some(2));
    assert_eq!(state.climate.unwrap().on, Some(false));
}

#[test]
fn renders_through_the_descriptor() {
    let schema = StateSchema::contract();
    let fields: Vec<_> = ["doors.lock=locked", "horn.sound_until=+10s", "climate.target_temperature_celsius=21.1"]
        .iter()
        .map(|arg| parse_assignment(&schema, arg, now()).unwrap())
        .collect();
    let raw = StateSchema::join(fields.iter().map(|f| &f.encoded));
    let decoded = leaves(&schema, Some(&raw)).unwrap();
    let human: Vec<String> = decoded.iter().map(|f| format!("{}={}", f.path, render(&schema, f, now()))).collect();
    assert_eq!(
        human,
        [
            "doors.lock=LOCKED",
            "climate.target_temperature_celsius=21.1",
            "horn.sound_until=2030-03-17T17:46:50Z (in 10s)"
        ]
    );
    let json: Vec<serde_json::Value> = decoded.iter().map(|f| to_json(&schema, f)).collect();
    assert_eq!(json, [serde_json::json!("LOCKED"), serde_json::json!(21.1), serde_json::json!("2030-03-17T17:46:50Z")]);
    assert!(leaves(&schema, None).unwrap().is_empty());
}

#[test]
fn enum_prefixes_follow_protobuf_style() {
    let pool = tether_sdk::pb::descriptor_pool();
    let lock = pool.get_enum_by_name("tether.state.v1.LockState").unwrap();
    assert_eq!(enum_prefix(&lock), "LOCK_STATE_");
    assert_eq!(enum_name(&lock, 2), "UNLOCKED");
    assert_eq!(enum_name(&lock, 9), "#9");
    assert_eq!(short_name("LOCK_STATE_", "LOCK_STATE_"), "LOCK_STATE_");
}
