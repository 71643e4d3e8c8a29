//! Typed views of a [`Vehicle`](tether_proto::app::v1::Vehicle) read from
//! tetherd: its desired and actual state.

use tether_proto::RawState;
use tether_proto::app::v1::Vehicle;
use tether_proto::state::v1::VehicleState;

/// The vehicle's desired state, typed (fields of a newer contract are
/// dropped; empty if tetherd sent none or it does not decode).
pub fn desired_of(vehicle: &Vehicle) -> VehicleState {
    typed(vehicle.desired.as_ref(), &vehicle.vehicle_id, "desired")
}

/// The vehicle's actual state as last reported, typed (fields of a newer
/// contract are dropped; empty if none was reported or it does not decode).
pub fn actual_of(vehicle: &Vehicle) -> VehicleState {
    typed(vehicle.actual.as_ref(), &vehicle.vehicle_id, "actual")
}

fn typed(raw: Option<&RawState>, vehicle_id: &str, which: &str) -> VehicleState {
    let Some(raw) = raw else { return VehicleState::default() };
    raw.decode_typed().unwrap_or_else(|error| {
        tracing::warn!(vehicle_id, which, %error, "state from tetherd does not decode");
        VehicleState::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::state::v1::Windows;

    #[test]
    fn decodes_both_states() {
        let state = VehicleState {
            windows: Some(Windows { front_left: Some(30), ..Default::default() }),
            ..Default::default()
        };
        let vehicle = Vehicle {
            vehicle_id: "car-1".into(),
            desired: Some(RawState::from_typed(&state)),
            actual: None,
            ..Default::default()
        };
        assert_eq!(desired_of(&vehicle), state);
        assert_eq!(actual_of(&vehicle), VehicleState::default());
    }
}
