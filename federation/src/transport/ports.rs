//! Picking loopback ports for processes started later (`strait local up`,
//! the cluster tests).

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// Lowest port picked.
const FLOOR: u16 = 10_000;

/// A loopback port that was free for both TCP and UDP a moment ago.
///
/// It is chosen at random **below the kernel's ephemeral range**
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port the kernel hands out
/// for `bind(0)` is also one it may give any outgoing connection, so between
/// the pick and the listen of the process the port is meant for, a node
/// dialling another could take it (seen: "address in use" when a five-node
/// `local up` started). Below that range only explicit binds compete.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let low = ephemeral_low().unwrap_or(32_768);
    if low > FLOOR + 1_000 {
        let span = u64::from(low - FLOOR);
        for _ in 0..256 {
            let r = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = FLOOR + (r % span) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
                && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                return Ok(port);
            }
        }
    }
    // No room below the range (or all taken): what the kernel gives.
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The first port of the ephemeral range, on Linux.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() -> std::io::Result<()> {
        let low = ephemeral_low().unwrap_or(32_768);
        for _ in 0..20 {
            let p = free_loopback_port()?;
            if low > FLOOR + 1_000 {
                assert!((FLOOR..low).contains(&p), "{p} not below {low}");
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, p))?;
            UdpSocket::bind((Ipv4Addr::LOCALHOST, p))?;
        }
        Ok(())
    }
}
