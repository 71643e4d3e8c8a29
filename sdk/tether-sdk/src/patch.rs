//! [`Patch`]: a typed builder of desired-state patches.
//!
//! A patch names only the fields to change; every other field keeps its
//! desired value. Momentary actions are target states bounded in time
//! ("horn sounding until now + 2 s"), never "toggle".

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tether_proto::RawState;
use tether_proto::state::v1::{
    Charging, Climate, Doors, Horn, Lights, LockState, OpenState, Trunk, VehicleState, Windows,
};

/// One of the vehicle's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Driver-side front window.
    FrontLeft,
    /// Passenger-side front window.
    FrontRight,
    /// Rear left window.
    RearLeft,
    /// Rear right window.
    RearRight,
    /// Sunroof.
    Sunroof,
}

/// A desired-state patch: the fields to change, nothing else.
///
/// Built from typed setters, from a whole [`VehicleState`], or from the raw
/// encoding of a state of a newer contract ([`Patch::from_raw`]), whose fields
/// this crate's typed structs may not know; setters called afterwards win over
/// the raw fields they overlap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    /// Fields from `from_raw`, encoded (passed on byte for byte).
    base: Bytes,
    /// Fields set through the typed API; encoded after `base`, so they win.
    typed: VehicleState,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A patch setting every field present in `state`.
    pub fn from_state(state: VehicleState) -> Self {
        Patch { base: Bytes::new(), typed: state }
    }

    /// A patch from an encoded state, kept byte for byte (for fields of a
    /// newer contract than this crate's).
    pub fn from_raw(raw: RawState) -> Self {
        Patch { base: raw.0, typed: VehicleState::default() }
    }

    /// Opens `window` to `percent` (0 closed, 100 fully open).
    pub fn window(mut self, window: Window, percent: u32) -> Self {
        let windows = self.typed.windows.get_or_insert_with(Windows::default);
        let slot = match window {
            Window::FrontLeft => &mut windows.front_left,
            Window::FrontRight => &mut windows.front_right,
            Window::RearLeft => &mut windows.rear_left,
            Window::RearRight => &mut windows.rear_right,
            Window::Sunroof => &mut windows.sunroof,
        };
        *slot = Some(percent);
        self
    }

    /// Locks or unlocks the doors.
    pub fn lock(mut self, state: LockState) -> Self {
        self.typed.doors.get_or_insert_with(Doors::default).lock = Some(state as i32);
        self
    }

    /// Opens or closes the trunk lid.
    pub fn trunk(mut self, state: OpenState) -> Self {
        self.typed.trunk.get_or_insert_with(Trunk::default).lid = Some(state as i32);
        self
    }

    /// Turns climate control on or off.
    pub fn climate_on(mut self, on: bool) -> Self {
        self.typed.climate.get_or_insert_with(Climate::default).on = Some(on);
        self
    }

    /// Sets the target cabin temperature, in degrees Celsius (15.0 to 30.0).
    pub fn target_temperature(mut self, celsius: f32) -> Self {
        self.typed.climate.get_or_insert_with(Climate::default).target_temperature_celsius = Some(celsius);
        self
    }

    /// Sets the charge limit, in percent (50 to 100).
    pub fn charge_limit(mut self, percent: u32) -> Self {
        self.typed.charging.get_or_insert_with(Charging::default).limit_percent = Some(percent);
        self
    }

    /// Opens or closes the charge port door.
    pub fn charge_port(mut self, state: OpenState) -> Self {
        self.typed.charging.get_or_insert_with(Charging::default).port = Some(state as i32);
        self
    }

    /// Flashes the lights until now + `duration` (at most 60 s).
    pub fn flash_lights_for(mut self, duration: Duration) -> Self {
        let until = prost_types::Timestamp::from(SystemTime::now() + duration);
        self.typed.lights.get_or_insert_with(Lights::default).flash_until = Some(until);
        self
    }

    /// Sounds the horn until now + `duration` (at most 30 s).
    pub fn horn_for(mut self, duration: Duration) -> Self {
        let until = prost_types::Timestamp::from(SystemTime::now() + duration);
        self.typed.horn.get_or_insert_with(Horn::default).sound_until = Some(until);
        self
    }

    /// The patch's encoding, as sent to tetherd.
    pub fn to_raw(&self) -> RawState {
        if self.base.is_empty() {
            return RawState::from_typed(&self.typed);
        }
        // Concatenated encodings merge; the typed fields come last and win.
        let mut out = BytesMut::with_capacity(self.base.len() + self.typed.encoded_len());
        out.extend_from_slice(&self.base);
        self.typed.encode_raw(&mut out);
        RawState(out.freeze())
    }

    /// Whether the patch changes nothing (tetherd refuses an empty patch).
    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.typed == VehicleState::default()
    }
}

impl From<VehicleState> for Patch {
    fn from(state: VehicleState) -> Self {
        Patch::from_state(state)
    }
}

impl From<RawState> for Patch {
    fn from(raw: RawState) -> Self {
        Patch::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::StateSchema;

    fn paths(patch: &Patch) -> Vec<String> {
        let schema = StateSchema::contract();
        schema.split(patch.to_raw().as_bytes()).unwrap().iter().map(|f| f.path.to_string()).collect()
    }

    #[test]
    fn setters_set_exactly_their_fields() {
        let patch = Patch::new()
            .window(Window::FrontLeft, 0)
            .window(Window::Sunroof, 100)
            .lock(LockState::Locked)
            .trunk(OpenState::Closed)
            .climate_on(false)
            .target_temperature(21.5)
            .charge_limit(80)
            .charge_port(OpenState::Open);
        assert_eq!(
            paths(&patch),
            [
                "windows.front_left",
                "windows.sunroof",
                "doors.lock",
                "trunk.lid",
                "climate.on",
                "climate.target_temperature_celsius",
                "charging.limit_percent",
                "charging.port",
            ]
        );
        let state = patch.to_raw().decode_typed().unwrap();
        assert_eq!(state.windows.unwrap().front_left, Some(0));
        assert_eq!(state.climate.unwrap().on, Some(false));
        assert_eq!(state.doors.unwrap().lock, Some(LockState::Locked as i32));
    }

    #[test]
    fn momentary_states_end_in_the_future() {
        let before = SystemTime::now();
        let state = Patch::new().horn_for(Duration::from_secs(2)).to_raw().decode_typed().unwrap();
        let until = SystemTime::try_from(state.horn.unwrap().sound_until.unwrap()).unwrap();
        assert!(until >= before + Duration::from_secs(2));
        assert!(until <= SystemTime::now() + Duration::from_secs(2));
        assert_eq!(paths(&Patch::new().flash_lights_for(Duration::from_secs(1))), ["lights.flash_until"]);
    }

    #[test]
    fn empty_and_raw_patches() {
        assert!(Patch::new().is_empty());
        assert!(Patch::from_raw(RawState::default()).is_empty());
        assert!(!Patch::new().climate_on(false).is_empty());

        // A raw patch is passed on byte for byte, even with fields this
        // contract does not know (field 99 here).
        let raw = RawState(Bytes::from_static(&[0x98, 0x06, 0x07]));
        let patch = Patch::from(raw.clone());
        assert!(!patch.is_empty());
        assert_eq!(patch.to_raw(), raw);

        // Typed setters after a raw base win over it.
        let base = RawState::from_typed(&Patch::new().charge_limit(60).to_raw().decode_typed().unwrap());
        let patch = Patch::from_raw(base).charge_limit(90);
        let state = patch.to_raw().decode_typed().unwrap();
        assert_eq!(state.charging.unwrap().limit_percent, Some(90));
    }
}
