//! [`RawState`]: a `tether.state.v1.VehicleState` kept as its encoded bytes.
//!
//! prost drops fields it does not know. The envelopes of the vehicle and app
//! services therefore hold the state as raw bytes, so that a server or agent
//! compiled against an older contract still passes on (and, through its
//! descriptor pool, understands) every field of a newer one. On the wire this
//! is exactly an embedded `VehicleState` message.

use ::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType, bytes, decode_varint, encode_key, encode_varint, fixed32, fixed64};
use prost::{DecodeError, Message};

use crate::state::v1::VehicleState;

/// An encoded `tether.state.v1.VehicleState` (protobuf merge semantics apply:
/// concatenating two encodings merges them).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RawState(pub Bytes);

impl RawState {
    /// Encodes a typed state.
    pub fn from_typed(state: &VehicleState) -> Self {
        RawState(Bytes::from(state.encode_to_vec()))
    }

    /// Decodes into the typed state of this crate's contract version (fields
    /// from newer versions are dropped).
    pub fn decode_typed(&self) -> Result<VehicleState, DecodeError> {
        VehicleState::decode(self.0.as_ref())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether no field is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<VehicleState> for RawState {
    fn from(state: VehicleState) -> Self {
        RawState::from_typed(&state)
    }
}

impl From<&VehicleState> for RawState {
    fn from(state: &VehicleState) -> Self {
        RawState::from_typed(state)
    }
}

impl std::fmt::Debug for RawState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode_typed() {
            Ok(state) => write!(f, "RawState({state:?})"),
            Err(_) => write!(f, "RawState({} undecodable bytes)", self.0.len()),
        }
    }
}

impl Message for RawState {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Re-encode the key, then the value unchanged. prost's own decoders do
        // the bounds and wire-type checks.
        let mut out = BytesMut::with_capacity(self.0.len() + 16);
        out.put_slice(&self.0);
        encode_key(tag, wire_type, &mut out);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(buf)?, &mut out),
            WireType::ThirtyTwoBit => {
                let mut v = 0u32;
                fixed32::merge(wire_type, &mut v, buf, ctx)?;
                out.put_u32_le(v);
            }
            WireType::SixtyFourBit => {
                let mut v = 0u64;
                fixed64::merge(wire_type, &mut v, buf, ctx)?;
                out.put_u64_le(v);
            }
            _ => {
                // Length-delimited; groups (absent from proto3) fail here with
                // prost's "invalid wire type" error.
                let mut v = Bytes::new();
                bytes::merge(wire_type, &mut v, buf, ctx)?;
                encode_varint(v.len() as u64, &mut out);
                out.put_slice(&v);
            }
        }
        self.0 = out.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::v1::{Climate, Windows};
    use crate::vehicle::v1::{Hello, VehicleMessage, vehicle_message::Kind};

    #[test]
    fn round_trips_inside_an_envelope_byte_for_byte() {
        let state = VehicleState {
            windows: Some(Windows { front_left: Some(40), ..Default::default() }),
            climate: Some(Climate { on: Some(true), target_temperature_celsius: Some(21.5) }),
            ..Default::default()
        };
        let msg = VehicleMessage {
            kind: Some(Kind::Hello(Hello {
                vehicle_id: "car-1".into(),
                actual: Some(RawState::from_typed(&state)),
                ..Default::default()
            })),
        };
        let bytes = msg.encode_to_vec();
        let back = VehicleMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.encode_to_vec(), bytes);
        let Some(Kind::Hello(hello)) = back.kind else { panic!("not a hello") };
        assert_eq!(hello.actual.unwrap().decode_typed().unwrap(), state);
    }

    #[test]
    fn keeps_fields_this_version_does_not_know() {
        // Field 99 does not exist in VehicleState v1.
        let mut unknown = BytesMut::new();
        encode_key(99, WireType::Varint, &mut unknown);
        encode_varint(7, &mut unknown);
        let mut raw = RawState::default();
        raw.merge(unknown.as_ref()).unwrap();
        assert_eq!(raw.as_bytes(), unknown.as_ref());
    }
}
