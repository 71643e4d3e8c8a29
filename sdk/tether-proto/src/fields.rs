//! Field paths over the state descriptor: split a `VehicleState` into its leaf
//! fields, validate each against the contract's rules, and join leaves back.
//!
//! This is what lets tetherd and the vehicle agent treat the state generically:
//! nothing here names a capability. A *leaf* is a field whose value is replaced
//! as a whole: a scalar, an enum, a repeated or map field, or a message from
//! `google.protobuf` (such as a Timestamp). Other message fields are walked
//! into; their leaves are addressed by the dotted path of field names from the
//! root, for example `windows.front_left`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, Value,
};

/// Default bound of a momentary state's duration when its rule gives none.
const DEFAULT_MAX_MOMENTARY: Duration = Duration::from_secs(300);

/// Why a state could not be read or a field is invalid. Messages name the field
/// path and say what the caller did wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FieldError {
    /// The bytes are not a valid encoding of the state message.
    #[error("state is not a valid {message}: {reason}")]
    Malformed {
        /// The state message's full name.
        message: String,
        /// The decoder's explanation.
        reason: String,
    },
    /// A field number the schema does not define.
    #[error("state has field number {number} at `{parent}`, which this server's contract does not define")]
    UnknownField {
        /// The path of the message holding it (empty for the root).
        parent: String,
        /// The field number.
        number: u32,
    },
    /// A path the schema does not define.
    #[error("unknown field path `{0}`")]
    UnknownPath(String),
    /// A value outside its rules.
    #[error("`{path}`: {reason}")]
    Invalid {
        /// The field path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a descriptor set cannot serve as a state schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The descriptor set does not decode.
    #[error("invalid descriptor set: {0}")]
    Descriptor(#[from] prost_reflect::DescriptorError),
    /// The state message is missing.
    #[error("descriptor set has no message `{0}`")]
    NoStateMessage(String),
}

/// Validity rules of a leaf, read from `tether.options.v1.rules`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Inclusive minimum.
    pub min: Option<f64>,
    /// Inclusive maximum.
    pub max: Option<f64>,
    /// A timestamp "until" that must lie in the near future when written.
    pub momentary: Option<Duration>,
}

/// One leaf of the schema.
#[derive(Debug, Clone)]
pub struct Leaf {
    path: Arc<str>,
    chain: Vec<FieldDescriptor>,
    rules: Rules,
}

impl Leaf {
    /// The dotted path, e.g. `windows.front_left`.
    pub fn path(&self) -> &Arc<str> {
        &self.path
    }

    /// The top-level field (the capability), e.g. `windows`.
    pub fn capability(&self) -> &str {
        self.chain[0].name()
    }

    /// The leaf's own descriptor.
    pub fn descriptor(&self) -> &FieldDescriptor {
        self.chain.last().expect("a leaf has at least one field")
    }

    /// Its validity rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// The value of one leaf, with its encoding as a state message holding only
/// that leaf. Concatenating such encodings merges them (protobuf semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue {
    /// The leaf's path.
    pub path: Arc<str>,
    /// The value.
    pub value: Value,
    /// A state message with only this leaf set, encoded.
    pub encoded: Bytes,
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.path, display_value(&self.value))
    }
}

/// The state schema: the state message's descriptor and its leaves.
#[derive(Clone)]
pub struct StateSchema {
    message: MessageDescriptor,
    leaves: Arc<BTreeMap<Arc<str>, Leaf>>,
}

impl fmt::Debug for StateSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSchema")
            .field("message", &self.message.full_name())
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

impl StateSchema {
    /// The schema of the contract this crate was generated from.
    ///
    /// Built once per process; every call returns a cheap clone sharing it
    /// (a fleet of agents in one process shares one schema).
    pub fn contract() -> Self {
        static CONTRACT: std::sync::OnceLock<StateSchema> = std::sync::OnceLock::new();
        CONTRACT
            .get_or_init(|| {
                Self::from_pool(&crate::descriptor_pool(), crate::VEHICLE_STATE)
                    .expect("the embedded contract has the state message")
            })
            .clone()
    }

    /// A schema from an encoded `FileDescriptorSet` (for example a newer
    /// contract's), with `message` as the state message.
    pub fn from_descriptor_set(bytes: &[u8], message: &str) -> Result<Self, SchemaError> {
        Self::from_pool(&DescriptorPool::decode(bytes)?, message)
    }

    /// A schema from a descriptor pool.
    pub fn from_pool(pool: &DescriptorPool, message: &str) -> Result<Self, SchemaError> {
        let descriptor =
            pool.get_message_by_name(message).ok_or_else(|| SchemaError::NoStateMessage(message.to_string()))?;
        let rules_ext = pool.get_extension_by_name("tether.options.v1.rules");
        let mut leaves = BTreeMap::new();
        collect_leaves(&descriptor, &mut Vec::new(), rules_ext.as_ref(), &mut leaves);
        Ok(StateSchema { message: descriptor, leaves: Arc::new(leaves) })
    }

    /// The state message's descriptor.
    pub fn message(&self) -> &MessageDescriptor {
        &self.message
    }

    /// Every leaf, by path.
    pub fn leaves(&self) -> impl Iterator<Item = &Leaf> {
        self.leaves.values()
    }

    /// The leaf at `path`.
    pub fn leaf(&self, path: &str) -> Result<&Leaf, FieldError> {
        self.leaves.get(path).ok_or_else(|| FieldError::UnknownPath(path.to_string()))
    }

    /// Decodes an encoded state (protobuf merge semantics: repeated
    /// occurrences merge) and returns its present leaves in path order. Fails
    /// on bytes that do not decode and on field numbers the schema lacks.
    pub fn split(&self, encoded: &[u8]) -> Result<Vec<FieldValue>, FieldError> {
        let mut out = Vec::new();
        self.walk(&self.decode(encoded)?, "", &mut Vec::new(), &mut out, None)?;
        Ok(out)
    }

    /// Like [`split`](Self::split), but skips field numbers the schema lacks
    /// (a report from a vehicle on a newer contract) and returns how many it
    /// skipped. Still fails on bytes that do not decode.
    pub fn split_known(&self, encoded: &[u8]) -> Result<(Vec<FieldValue>, usize), FieldError> {
        let mut out = Vec::new();
        let mut skipped = 0;
        self.walk(&self.decode(encoded)?, "", &mut Vec::new(), &mut out, Some(&mut skipped))?;
        Ok((out, skipped))
    }

    fn decode(&self, encoded: &[u8]) -> Result<DynamicMessage, FieldError> {
        DynamicMessage::decode(self.message.clone(), encoded)
            .map_err(|e| FieldError::Malformed { message: self.message.full_name().to_string(), reason: e.to_string() })
    }

    /// Collects the leaves of `message`; unknown fields fail, or are counted
    /// in `skipped` when given.
    fn walk(
        &self,
        message: &DynamicMessage,
        prefix: &str,
        chain: &mut Vec<FieldDescriptor>,
        out: &mut Vec<FieldValue>,
        mut skipped: Option<&mut usize>,
    ) -> Result<(), FieldError> {
        if let Some(unknown) = message.unknown_fields().next() {
            match skipped.as_deref_mut() {
                Some(skipped) => *skipped += message.unknown_fields().count(),
                None => return Err(FieldError::UnknownField { parent: prefix.to_string(), number: unknown.number() }),
            }
        }
        for (field, value) in message.fields() {
            let path = if prefix.is_empty() { field.name().to_string() } else { format!("{prefix}.{}", field.name()) };
            chain.push(field.clone());
            match (is_leaf(&field), value) {
                (false, Value::Message(inner)) => self.walk(inner, &path, chain, out, skipped.as_deref_mut())?,
                _ => {
                    let leaf = self.leaf(&path)?;
                    out.push(FieldValue {
                        path: leaf.path.clone(),
                        value: value.clone(),
                        encoded: encode_leaf(&self.message, chain, value.clone()),
                    });
                }
            }
            chain.pop();
        }
        Ok(())
    }

    /// Builds the value of `path` (for example from a typed builder or a CLI).
    pub fn field_value(&self, path: &str, value: Value) -> Result<FieldValue, FieldError> {
        let leaf = self.leaf(path)?;
        if !value.is_valid_for_field(leaf.descriptor()) {
            return Err(FieldError::Invalid {
                path: path.to_string(),
                reason: format!("{} is not a {:?}", display_value(&value), leaf.descriptor().kind()),
            });
        }
        let encoded = encode_leaf(&self.message, &leaf.chain, value.clone());
        Ok(FieldValue { path: leaf.path.clone(), value, encoded })
    }

    /// Checks a value against its leaf's rules; `now` bounds momentary states.
    pub fn validate(&self, field: &FieldValue, now: SystemTime) -> Result<(), FieldError> {
        let leaf = self.leaf(&field.path)?;
        let invalid = |reason: String| FieldError::Invalid { path: field.path.to_string(), reason };
        if let (Kind::Enum(e), Value::EnumNumber(n)) = (leaf.descriptor().kind(), &field.value) {
            match e.get_value(*n) {
                None => return Err(invalid(format!("{n} is not a value of enum {}", e.full_name()))),
                Some(v) if v.number() == 0 => {
                    return Err(invalid(format!("{} (the zero value) means unset; name a value", v.name())));
                }
                Some(_) => {}
            }
        }
        if let Some(x) = as_f64(&field.value) {
            if x.is_nan() {
                return Err(invalid("NaN is not a value".into()));
            }
            if let Some(min) = leaf.rules.min.filter(|min| x < *min) {
                return Err(invalid(format!("{x} is below the minimum {min}")));
            }
            if let Some(max) = leaf.rules.max.filter(|max| x > *max) {
                return Err(invalid(format!("{x} is above the maximum {max}")));
            }
        }
        if let Some(bound) = leaf.rules.momentary {
            let until =
                timestamp_of(&field.value).ok_or_else(|| invalid("a momentary state needs a timestamp".into()))?;
            if until <= now {
                return Err(invalid("a momentary state must end in the future".into()));
            }
            if until > now + bound {
                return Err(invalid(format!("a momentary state may last at most {}s", bound.as_secs())));
            }
        }
        Ok(())
    }

    /// Joins leaf encodings into one state (later leaves win on the same path).
    pub fn join<'a>(fields: impl IntoIterator<Item = &'a Bytes>) -> crate::RawState {
        let mut out = Vec::new();
        for encoded in fields {
            out.extend_from_slice(encoded);
        }
        crate::RawState(Bytes::from(out))
    }
}

/// Whether a field is a leaf (replaced as a whole).
fn is_leaf(field: &FieldDescriptor) -> bool {
    if field.is_list() || field.is_map() {
        return true;
    }
    match field.kind() {
        Kind::Message(m) => m.full_name().starts_with("google.protobuf."),
        _ => true,
    }
}

fn collect_leaves(
    message: &MessageDescriptor,
    chain: &mut Vec<FieldDescriptor>,
    rules_ext: Option<&ExtensionDescriptor>,
    out: &mut BTreeMap<Arc<str>, Leaf>,
) {
    for field in message.fields() {
        chain.push(field.clone());
        match field.kind() {
            Kind::Message(inner) if !is_leaf(&field) => {
                // Guard against recursive schemas: a state has finite depth.
                if !chain[..chain.len() - 1].iter().any(|f| f.kind() == field.kind()) {
                    collect_leaves(&inner, chain, rules_ext, out);
                }
            }
            _ => {
                let path: Arc<str> = chain.iter().map(|f| f.name()).collect::<Vec<_>>().join(".").into();
                let rules = rules_ext.map(|ext| read_rules(&field, ext)).unwrap_or_default();
                out.insert(path.clone(), Leaf { path, chain: chain.clone(), rules });
            }
        }
        chain.pop();
    }
}

fn read_rules(field: &FieldDescriptor, ext: &ExtensionDescriptor) -> Rules {
    let options = field.options();
    if !options.has_extension(ext) {
        return Rules::default();
    }
    let value = options.get_extension(ext);
    let Some(rules) = value.as_message() else { return Rules::default() };
    let get = |name: &str| rules.get_field_by_name(name).filter(|_| rules.has_field_by_name(name));
    let momentary = get("momentary").and_then(|v| v.as_bool()).unwrap_or(false);
    let max_secs = get("max_momentary_seconds").and_then(|v| v.as_u32()).unwrap_or(0);
    Rules {
        min: get("min").and_then(|v| v.as_f64()),
        max: get("max").and_then(|v| v.as_f64()),
        momentary: momentary.then(|| match max_secs {
            0 => DEFAULT_MAX_MOMENTARY,
            s => Duration::from_secs(u64::from(s)),
        }),
    }
}

/// Encodes a root message with only the leaf at `chain` set to `value`.
fn encode_leaf(root: &MessageDescriptor, chain: &[FieldDescriptor], value: Value) -> Bytes {
    fn nest(desc: &MessageDescriptor, chain: &[FieldDescriptor], value: Value) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        match chain {
            [leaf] => message.set_field(leaf, value),
            [head, rest @ ..] => {
                let Kind::Message(inner) = head.kind() else { unreachable!("non-leaf is a message") };
                message.set_field(head, Value::Message(nest(&inner, rest, value)));
            }
            [] => {}
        }
        message
    }
    Bytes::from(nest(root, chain, value).encode_to_vec())
}

fn as_f64(value: &Value) -> Option<f64> {
    Some(match value {
        Value::I32(v) => f64::from(*v),
        Value::I64(v) => *v as f64,
        Value::U32(v) => f64::from(*v),
        Value::U64(v) => *v as f64,
        Value::F32(v) => f64::from(*v),
        Value::F64(v) => *v,
        _ => return None,
    })
}

/// Reads a `google.protobuf.Timestamp` value.
pub fn timestamp_of(value: &Value) -> Option<SystemTime> {
    let message = value.as_message()?;
    if prost_reflect::ReflectMessage::descriptor(message).full_name() != "google.protobuf.Timestamp" {
        return None;
    }
    let seconds = message.get_field_by_name("seconds")?.as_i64()?;
    let nanos = message.get_field_by_name("nanos")?.as_i32()?;
    let seconds = u64::try_from(seconds).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// A short human-readable rendering of a value (enums by number; a CLI can
/// resolve names through the leaf's descriptor).
pub fn display_value(value: &Value) -> String {
    match value {
        Value::Bool(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::F32(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::String(v) => format!("{v:?}"),
        Value::Bytes(v) => format!("<{} bytes>", v.len()),
        Value::EnumNumber(n) => format!("#{n}"),
        Value::Message(m) => match timestamp_of(value) {
            Some(t) => format!("{}s", t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
            None => format!("{m:?}"),
        },
        Value::List(v) => format!("[{} items]", v.len()),
        Value::Map(v) => format!("{{{} entries}}", v.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::v1::{Climate, Doors, Horn, LockState, VehicleState, Windows};

    fn encode(state: &VehicleState) -> Vec<u8> {
        state.encode_to_vec()
    }

    #[test]
    fn splits_a_patch_into_leaves_with_paths() {
        let schema = StateSchema::contract();
        let patch = VehicleState {
            windows: Some(Windows { front_left: Some(0), rear_right: Some(100), ..Default::default() }),
            climate: Some(Climate { on: Some(false), ..Default::default() }),
            ..Default::default()
        };
        let fields = schema.split(&encode(&patch)).unwrap();
        let paths: Vec<&str> = fields.iter().map(|f| &*f.path).collect();
        assert_eq!(paths, ["windows.front_left", "windows.rear_right", "climate.on"]);
        // Explicit presence: zero and false are values, not absence.
        assert_eq!(fields[0].value, Value::U32(0));
        assert_eq!(fields[2].value, Value::Bool(false));
        // Joining the leaves gives back the same state.
        let joined = StateSchema::join(fields.iter().map(|f| &f.encoded));
        assert_eq!(joined.decode_typed().unwrap(), patch);
    }

    #[test]
    fn rules_come_from_the_descriptor() {
        let schema = StateSchema::contract();
        let leaf = schema.leaf("climate.target_temperature_celsius").unwrap();
        assert_eq!(leaf.rules().min, Some(15.0));
        assert_eq!(leaf.rules().max, Some(30.0));
        assert_eq!(leaf.capability(), "climate");
        assert_eq!(schema.leaf("horn.sound_until").unwrap().rules().momentary, Some(Duration::from_secs(30)));
    }

    #[test]
    fn validation_names_the_field() {
        let schema = StateSchema::contract();
        let now = SystemTime::now();
        let check = |state: VehicleState| {
            let fields = schema.split(&encode(&state)).unwrap();
            fields.iter().try_for_each(|f| schema.validate(f, now))
        };
        let too_open =
            VehicleState { windows: Some(Windows { sunroof: Some(101), ..Default::default() }), ..Default::default() };
        let err = check(too_open).unwrap_err().to_string();
        assert!(err.contains("windows.sunroof") && err.contains("maximum 100"), "{err}");

        let unspecified =
            VehicleState { doors: Some(Doors { lock: Some(LockState::Unspecified as i32) }), ..Default::default() };
        assert!(check(unspecified).unwrap_err().to_string().contains("doors.lock"));

        let unknown_enum = VehicleState { doors: Some(Doors { lock: Some(9) }), ..Default::default() };
        assert!(check(unknown_enum).unwrap_err().to_string().contains("9 is not a value"));

        let horn_too_long = VehicleState {
            horn: Some(Horn { sound_until: Some(prost_types::Timestamp::from(now + Duration::from_secs(3600))) }),
            ..Default::default()
        };
        assert!(check(horn_too_long).unwrap_err().to_string().contains("at most 30s"));

        let ok = VehicleState {
            climate: Some(Climate { target_temperature_celsius: Some(21.5), on: Some(true) }),
            ..Default::default()
        };
        check(ok).unwrap();
    }

    #[test]
    fn unknown_field_numbers_are_refused() {
        let schema = StateSchema::contract();
        // windows (field 1) holding an unknown field 42.
        let bytes = [0x0a, 0x02, 0xd0, 0x02, 0x01];
        let err = schema.split(&bytes[..3]).map(|_| ()).unwrap_err();
        assert!(matches!(err, FieldError::Malformed { .. }), "{err:?}");
        let inner = [0x0a, 0x03, 0xd0, 0x02, 0x01];
        let err = schema.split(&inner).unwrap_err();
        assert_eq!(err, FieldError::UnknownField { parent: "windows".into(), number: 42 });
        // Reading a vehicle's report, unknown fields are skipped and counted.
        let (fields, skipped) = schema.split_known(&inner).unwrap();
        assert!(fields.is_empty());
        assert_eq!(skipped, 1);
    }
}
