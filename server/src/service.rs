//! The gRPC services: thin shells that validate input, call the hub and the
//! core, and map domain errors to `tonic::Status` (in `status.rs` only).

mod admin;
mod app;
mod audit;
mod authz;
mod convert;
mod deadline;
mod status;
mod vehicle;

pub use admin::AdminApi;
pub use app::ControlApi;
pub use status::ApiError;
pub use vehicle::VehicleApi;

/// Largest page of a paged RPC (ListVehicles, ListAuditRecords).
const MAX_PAGE: u32 = 1000;
/// The page of a request that asks for none in particular.
const DEFAULT_PAGE: usize = 100;

/// A request's `page_size` as a count: 0 is the default, above
/// [`MAX_PAGE`] is refused.
fn page_size(requested: u32) -> Result<usize, ApiError> {
    match requested {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(ApiError::InvalidArgument(format!("page_size must be at most {MAX_PAGE}"))),
        n => Ok(n as usize),
    }
}

/// Checks a vehicle id: 1 to 64 characters of `[A-Za-z0-9._:-]`, starting
/// with a letter or digit.
pub fn validate_vehicle_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok { Ok(()) } else { Err(ApiError::InvalidVehicleId(id.chars().take(80).collect())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_ids() {
        for good in ["car-1", "WVW1234567", "fleet:eu.car_9"] {
            validate_vehicle_id(good).unwrap();
        }
        for bad in ["", "-car", "car 1", "car/1", &"x".repeat(65), "caré"] {
            assert!(validate_vehicle_id(bad).is_err(), "{bad:?}");
        }
    }
}
