//! Values of state fields, parsed from `PATH=VALUE` arguments and rendered for
//! people and machines, generically through the contract's descriptors: the
//! kind of a leaf decides how its text reads, and nothing here names a
//! capability.
//!
//! Accepted forms: `true`/`false`/`on`/`off` for booleans; integers and
//! numbers within the type and the contract's `rules` (min/max); enum values
//! by full name (`LOCK_STATE_LOCKED`), by name without the enum's prefix
//! (`LOCKED`), in any case, or by number; `google.protobuf.Timestamp` as
//! `+DURATION` (from now) or RFC 3339; `google.protobuf.Duration` as `10s`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use prost_reflect::{DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, Value};
use tether_sdk::pb::fields::{Leaf, Rules, display_value, timestamp_of};
use tether_sdk::pb::{FieldError, FieldValue, RawState, StateSchema};

use crate::when;

const TIMESTAMP: &str = "google.protobuf.Timestamp";
const DURATION: &str = "google.protobuf.Duration";

/// A `PATH=VALUE` argument that cannot be used: names the path, what is wrong
/// and the forms that are accepted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValueError {
    /// The field path, once known.
    path: Option<String>,
    /// What is wrong.
    problem: String,
    /// What would be accepted instead.
    accepted: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        write!(f, "{}; expected {}", self.problem, self.accepted)
    }
}

impl std::error::Error for ValueError {}

impl ValueError {
    /// A path given twice in one command.
    pub(crate) fn duplicate(path: &str) -> Self {
        ValueError {
            path: Some(path.to_string()),
            problem: "given more than once".into(),
            accepted: "each path once".into(),
        }
    }
}

// === Parsing ===

/// Parses one `PATH=VALUE` argument into the leaf's value, checked against
/// the contract's rules (`now` anchors `+DURATION` and momentary bounds).
pub(crate) fn parse_assignment(schema: &StateSchema, arg: &str, now: SystemTime) -> Result<FieldValue, ValueError> {
    let known_paths =
        || format!("one of {}", schema.leaves().map(|l| l.path().to_string()).collect::<Vec<_>>().join(", "));
    let Some((path, text)) = arg.split_once('=') else {
        return Err(ValueError {
            path: None,
            problem: format!("{arg:?} is not PATH=VALUE"),
            accepted: format!("PATH=VALUE with PATH {}", known_paths()),
        });
    };
    let path = path.trim();
    let leaf = schema.leaf(path).map_err(|_| ValueError {
        path: None,
        problem: format!("unknown field path `{path}`"),
        accepted: known_paths(),
    })?;
    let value = parse_value(leaf, text, now)?;
    let invalid = |e: FieldError| {
        let problem = match e {
            FieldError::Invalid { reason, .. } => reason,
            other => other.to_string(),
        };
        ValueError { path: Some(path.to_string()), problem, accepted: forms(leaf) }
    };
    let field = schema.field_value(path, value).map_err(invalid)?;
    schema.validate(&field, now).map_err(invalid)?;
    Ok(field)
}

/// Parses `text` as a value of `leaf`, by the leaf's kind.
pub(crate) fn parse_value(leaf: &Leaf, text: &str, now: SystemTime) -> Result<Value, ValueError> {
    let descriptor = leaf.descriptor();
    let error = |problem: String| ValueError { path: Some(leaf.path().to_string()), problem, accepted: forms(leaf) };
    if descriptor.is_list() || descriptor.is_map() {
        return Err(error("a repeated or map field cannot be set from the command line".into()));
    }
    let trimmed = text.trim();
    let rules = leaf.rules();
    let value = match descriptor.kind() {
        Kind::Bool => parse_bool(trimmed).map(Value::Bool),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            parse_int(trimmed, rules, i32::MIN.into(), i32::MAX.into()).map(|n| Value::I32(n as i32))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            parse_int(trimmed, rules, i64::MIN.into(), i64::MAX.into()).map(|n| Value::I64(n as i64))
        }
        Kind::Uint32 | Kind::Fixed32 => parse_int(trimmed, rules, 0, u32::MAX.into()).map(|n| Value::U32(n as u32)),
        Kind::Uint64 | Kind::Fixed64 => parse_int(trimmed, rules, 0, u64::MAX.into()).map(|n| Value::U64(n as u64)),
        Kind::Float => parse_float(trimmed, rules, f64::from(f32::MAX)).map(|x| Value::F32(x as f32)),
        Kind::Double => parse_float(trimmed, rules, f64::MAX).map(Value::F64),
        Kind::String => Ok(Value::String(text.to_string())),
        Kind::Bytes => Ok(Value::Bytes(text.as_bytes().to_vec().into())),
        Kind::Enum(e) => parse_enum(&e, trimmed),
        Kind::Message(m) if m.full_name() == TIMESTAMP => parse_timestamp(trimmed, now).map(|t| {
            let mut message = DynamicMessage::new(m);
            message.set_field_by_name("seconds", Value::I64(t.seconds));
            message.set_field_by_name("nanos", Value::I32(t.nanos));
            Value::Message(message)
        }),
        Kind::Message(m) if m.full_name() == DURATION => parse_duration(trimmed).map(|d| {
            let mut message = DynamicMessage::new(m);
            message.set_field_by_name("seconds", Value::I64(d.as_secs() as i64));
            message.set_field_by_name("nanos", Value::I32(d.subsec_nanos() as i32));
            Value::Message(message)
        }),
        Kind::Message(m) => Err(format!("a {} cannot be set from the command line", m.full_name())),
    };
    value.map_err(error)
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean")),
    }
}

/// An integer within `[lo, hi]` (the type's range) and the rules.
fn parse_int(text: &str, rules: &Rules, lo: i128, hi: i128) -> Result<i128, String> {
    let n: i128 = text.parse().map_err(|_| format!("{text:?} is not an integer"))?;
    if n < lo || n > hi {
        return Err(format!("{n} is out of range"));
    }
    check_rules(n as f64, &n.to_string(), rules)?;
    Ok(n)
}

/// A finite number within `±limit` (the type's range) and the rules.
fn parse_float(text: &str, rules: &Rules, limit: f64) -> Result<f64, String> {
    let x: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !x.is_finite() || x.abs() > limit {
        return Err(format!("{text:?} is not a finite number in range"));
    }
    check_rules(x, text, rules)?;
    Ok(x)
}

fn check_rules(x: f64, shown: &str, rules: &Rules) -> Result<(), String> {
    if let Some(min) = rules.min.filter(|min| x < *min) {
        return Err(format!("{shown} is below the minimum {min}"));
    }
    if let Some(max) = rules.max.filter(|max| x > *max) {
        return Err(format!("{shown} is above the maximum {max}"));
    }
    Ok(())
}

fn parse_enum(e: &EnumDescriptor, text: &str) -> Result<Value, String> {
    let prefix = enum_prefix(e);
    let found = match text.parse::<i32>() {
        Ok(number) => e.get_value(number),
        Err(_) => e
            .values()
            .find(|v| v.name().eq_ignore_ascii_case(text) || short_name(v.name(), &prefix).eq_ignore_ascii_case(text)),
    };
    match found {
        Some(v) if v.number() == 0 => Err(format!("{} (the zero value) means unset", v.name())),
        Some(v) => Ok(Value::EnumNumber(v.number())),
        None => Err(format!("{text:?} is not a value of {}", e.name())),
    }
}

/// `+DURATION` from `now`, or an RFC 3339 time (any offset).
fn parse_timestamp(text: &str, now: SystemTime) -> Result<prost_types::Timestamp, String> {
    if let Some(ahead) = text.strip_prefix('+') {
        let ahead = humantime::parse_duration(ahead.trim()).map_err(|e| format!("{text:?}: {e}"))?;
        let time = now.checked_add(ahead).ok_or_else(|| format!("{text:?} is too far ahead"))?;
        return Ok(time.into());
    }
    prost_types::Timestamp::from_str(text).map_err(|_| format!("{text:?} is not a time"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

/// The accepted forms of a leaf's values, for error messages.
fn forms(leaf: &Leaf) -> String {
    let rules = leaf.rules();
    let range = |what: &str| match (rules.min, rules.max) {
        (Some(min), Some(max)) => format!("{what} from {min} to {max}"),
        (Some(min), None) => format!("{what} of at least {min}"),
        (None, Some(max)) => format!("{what} of at most {max}"),
        (None, None) => what.to_string(),
    };
    let descriptor = leaf.descriptor();
    if descriptor.is_list() || descriptor.is_map() {
        return "a field that is not repeated".into();
    }
    match descriptor.kind() {
        Kind::Bool => "true, false, on or off".into(),
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 if rules.min.is_none() => {
            range("a non-negative integer")
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            range("an integer")
        }
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => range("an integer"),
        Kind::Float | Kind::Double => range("a number"),
        Kind::String | Kind::Bytes => "text".into(),
        Kind::Enum(e) => {
            let prefix = enum_prefix(&e);
            let names: Vec<String> =
                e.values().filter(|v| v.number() != 0).map(|v| short_name(v.name(), &prefix).to_string()).collect();
            let example = e.values().find(|v| v.number() != 0).map(|v| v.name().to_string()).unwrap_or_default();
            format!("{} (in any case; the full name such as {example} or the number also work)", one_of(&names))
        }
        Kind::Message(m) if m.full_name() == TIMESTAMP => {
            let bound = rules.momentary.map(|b| format!(", at most {} ahead", when::span(b))).unwrap_or_default();
            format!("+DURATION from now (e.g. +10s) or an RFC 3339 time (e.g. 2030-01-01T12:00:00Z){bound}")
        }
        Kind::Message(m) if m.full_name() == DURATION => "a duration such as 10s or 1m 30s".into(),
        Kind::Message(_) => "a scalar, enum, timestamp or duration field".into(),
    }
}

fn one_of(names: &[String]) -> String {
    match names {
        [] => "no value".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

// === Enum names ===

/// The prefix protobuf style gives an enum's values: its name in
/// SCREAMING_SNAKE_CASE and `_` (`LockState` → `LOCK_STATE_`).
fn enum_prefix(e: &EnumDescriptor) -> String {
    let name: Vec<char> = e.name().chars().collect();
    let mut out = String::new();
    for (i, c) in name.iter().enumerate() {
        let after_lower = i > 0 && (name[i - 1].is_ascii_lowercase() || name[i - 1].is_ascii_digit());
        let ends_acronym =
            i > 0 && name[i - 1].is_ascii_uppercase() && name.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        if c.is_ascii_uppercase() && (after_lower || ends_acronym) {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out.push('_');
    out
}

/// A value name without its enum's prefix (`LOCK_STATE_LOCKED` → `LOCKED`).
fn short_name<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).filter(|rest| !rest.is_empty()).unwrap_or(name)
}

/// The short name of `number` in `e`, or `#number` when `e` lacks it.
pub(crate) fn enum_name(e: &EnumDescriptor, number: i32) -> String {
    match e.get_value(number) {
        Some(v) => short_name(v.name(), &enum_prefix(e)).to_string(),
        None => format!("#{number}"),
    }
}

// === Rendering ===

/// The present leaves of an encoded state, in path order.
pub(crate) fn leaves(schema: &StateSchema, state: Option<&RawState>) -> Result<Vec<FieldValue>, FieldError> {
    state.map_or(Ok(Vec::new()), |s| schema.split(s.as_bytes()))
}

/// A leaf's value for people: enums by short name, timestamps as RFC 3339
/// with their distance from `now`.
pub(crate) fn render(schema: &StateSchema, field: &FieldValue, now: SystemTime) -> String {
    match schema.leaf(&field.path) {
        Ok(leaf) => render_value(leaf.descriptor(), &field.value, now),
        Err(_) => display_value(&field.value),
    }
}

/// A value of `descriptor` for people.
pub(crate) fn render_value(descriptor: &FieldDescriptor, value: &Value, now: SystemTime) -> String {
    let kind = descriptor.kind();
    match value {
        Value::List(items) => {
            format!("[{}]", items.iter().map(|v| render_one(&kind, v, now)).collect::<Vec<_>>().join(", "))
        }
        _ => render_one(&kind, value, now),
    }
}

fn render_one(kind: &Kind, value: &Value, now: SystemTime) -> String {
    match (kind, value) {
        (Kind::Enum(e), Value::EnumNumber(n)) => enum_name(e, *n),
        (Kind::Message(m), Value::Message(_)) if m.full_name() == TIMESTAMP => match timestamp_of(value) {
            Some(time) => when::absolute_and_relative(time, now),
            None => display_value(value),
        },
        (Kind::Message(m), Value::Message(_)) if m.full_name() == DURATION => match duration_of(value) {
            Some(d) => humantime::format_duration(d).to_string(),
            None => display_value(value),
        },
        _ => display_value(value),
    }
}

/// A leaf's value for machines: numbers and booleans as JSON, enums by short
/// name, timestamps as RFC 3339, durations as `"1.5s"`.
pub(crate) fn to_json(schema: &StateSchema, field: &FieldValue) -> serde_json::Value {
    let kind = schema.leaf(&field.path).map(|l| l.descriptor().kind()).ok();
    json_one(kind.as_ref(), &field.value)
}

fn json_one(kind: Option<&Kind>, value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Bool(b) => J::Bool(*b),
        Value::I32(n) => (*n).into(),
        Value::I64(n) => (*n).into(),
        Value::U32(n) => (*n).into(),
        Value::U64(n) => (*n).into(),
        // Through the shortest decimal text, so 0.1f32 reads 0.1, not 0.100000001.
        Value::F32(x) => {
            x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(J::Null, J::Number)
        }
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.clone()),
        Value::EnumNumber(n) => match kind {
            Some(Kind::Enum(e)) => J::String(enum_name(e, *n)),
            _ => (*n).into(),
        },
        Value::List(items) => J::Array(items.iter().map(|v| json_one(kind, v)).collect()),
        Value::Message(_) => match (timestamp_of(value), duration_of(value)) {
            (Some(time), _) => when::json(Some(time)),
            (None, Some(d)) => J::String(format!("{}s", d.as_secs_f64())),
            (None, None) => J::String(display_value(value)),
        },
        Value::Bytes(_) | Value::Map(_) => J::String(display_value(value)),
    }
}

/// Reads a `google.protobuf.Duration` value.
fn duration_of(value: &Value) -> Option<Duration> {
    let message = value.as_message()?;
    if prost_reflect::ReflectMessage::descriptor(message).full_name() != DURATION {
        return None;
    }
    let seconds = u64::try_from(message.get_field_by_name("seconds")?.as_i64()?).ok()?;
    let nanos = u32::try_from(message.get_field_by_name("nanos")?.as_i32()?).ok()?;
    Some(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests;
