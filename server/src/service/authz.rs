//! What an authenticated principal may do: every permission check of the
//! app-facing and admin APIs, in one place. A refused call changes nothing.

use crate::auth::Principal;

use super::status::ApiError;

fn denied(principal: &Principal, what: String) -> ApiError {
    ApiError::PermissionDenied(format!("{} may not {what}", principal.subject))
}

/// Reading or watching `vehicle`.
pub(crate) fn may_read(p: &Principal, vehicle: &str) -> Result<(), ApiError> {
    if !(p.scopes.read || p.scopes.control) {
        return Err(denied(p, "read vehicles (needs scope vehicles:read)".into()));
    }
    if !p.scopes.covers_vehicle(vehicle) {
        return Err(denied(p, format!("access vehicle {vehicle:?} (outside its vehicle/fleet scopes)")));
    }
    Ok(())
}

/// Listing vehicles (each listed vehicle is then filtered by [`may_read`]).
pub(crate) fn may_list(p: &Principal) -> Result<(), ApiError> {
    if p.scopes.read || p.scopes.control {
        Ok(())
    } else {
        Err(denied(p, "list vehicles (needs scope vehicles:read)".into()))
    }
}

/// Writing or cancelling fields of `capabilities` on `vehicle`.
pub(crate) fn may_control<'a>(
    p: &Principal,
    vehicle: &str,
    capabilities: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    if !p.scopes.covers_vehicle(vehicle) {
        return Err(denied(p, format!("access vehicle {vehicle:?} (outside its vehicle/fleet scopes)")));
    }
    for capability in capabilities {
        if !p.scopes.controls(capability) {
            return Err(denied(
                p,
                format!("control {capability} (needs scope vehicles:control or control:{capability})"),
            ));
        }
    }
    Ok(())
}

/// Cancelling every pending field of a vehicle.
pub(crate) fn may_control_all(p: &Principal, vehicle: &str) -> Result<(), ApiError> {
    may_control(p, vehicle, [])?;
    if p.scopes.control {
        Ok(())
    } else {
        Err(denied(p, "cancel every field (needs scope vehicles:control; name the paths instead)".into()))
    }
}

/// Reading `vehicle`'s audit trail (which names other callers).
pub(crate) fn may_audit(p: &Principal, vehicle: &str) -> Result<(), ApiError> {
    if !p.scopes.audit {
        return Err(denied(p, "read audit trails (needs scope audit:read)".into()));
    }
    if !p.scopes.covers_vehicle(vehicle) {
        return Err(denied(p, format!("access vehicle {vehicle:?} (outside its vehicle/fleet scopes)")));
    }
    Ok(())
}

/// Node introspection.
pub(crate) fn may_admin(p: &Principal) -> Result<(), ApiError> {
    if p.scopes.admin { Ok(()) } else { Err(denied(p, "read node statistics (needs scope admin:read)".into())) }
}
