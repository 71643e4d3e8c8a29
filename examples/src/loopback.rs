//! Spreading a simulated fleet's connections over loopback source addresses.
//!
//! Every connection to tetherd from one source address needs its own
//! ephemeral port, and the kernel finds a free one by walking the ports in
//! use: with 18,000 connections and as many closing ones after a restart,
//! `connect` itself took half of the simulator's CPU in a reconnect storm
//! (`__inet_check_established`, `perf`). Connections bound to 127.0.0.1 to
//! 127.0.0.N each have their own ~28,000 ports.

use std::net::{IpAddr, Ipv4Addr};

/// The source address of the `index`-th connection: `None` (the kernel's
/// choice) for one address, else 127.0.0.1 to 127.0.0.`count` in turn.
pub fn source_address(index: usize, count: u8) -> Option<IpAddr> {
    if count <= 1 {
        return None;
    }
    let host = 1 + (index % usize::from(count)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_source_addresses() {
        assert_eq!(source_address(5, 1), None);
        assert_eq!(source_address(0, 4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(source_address(5, 4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(source_address(255, 255), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
    }
}
