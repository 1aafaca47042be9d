//! UDP sockets for heartbeats, set up with socket2 (docs/DESIGN.md §2).
//!
//! Each node has two sockets:
//! - a **unicast** socket bound to its own `listen` address: it sends every heartbeat (to the
//!   group and to seeds, so the source address is the node's own) and receives unicast
//!   heartbeats from nodes that list it as a seed;
//! - a **group** socket bound to `group:port` (so it only receives group traffic), joined on
//!   the interface named in the config, with `IP_MULTICAST_ALL` off so that a host-wide join
//!   by another program cannot leak other groups' traffic into it.
//!
//! The interface is named explicitly (by name or IPv4 address) and used both for the join
//! and as `IP_MULTICAST_IF`, so a multi-homed node never heartbeats on the wrong network.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Multicast parameters for [`unicast_socket`] and [`group_socket`].
#[derive(Debug, Clone)]
pub struct MulticastParams {
    /// The group.
    pub group: Ipv4Addr,
    /// Its UDP port.
    pub port: u16,
    /// IPv4 address of the interface to use (see [`resolve_interface`]).
    pub interface: Ipv4Addr,
    /// TTL of sent datagrams.
    pub ttl: u32,
    /// Whether our own group datagrams loop back to sockets on this host.
    pub loopback: bool,
}

/// Resolves an interface given by IPv4 address or by name (e.g. `eth0`) to its IPv4 address.
pub fn resolve_interface(name_or_addr: &str) -> io::Result<Ipv4Addr> {
    if let Ok(ip) = name_or_addr.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for ifa in addrs {
        if ifa.interface_name != name_or_addr {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("interface `{name_or_addr}` not found or has no IPv4 address"),
    ))
}

fn new_udp() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn into_tokio(s: Socket) -> io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(s.into())
}

/// The node's unicast socket, bound to `addr`; when `mcast` is given it is also set up to
/// send to the group (interface, TTL, loopback). Must be called inside a tokio runtime.
pub fn unicast_socket(
    addr: SocketAddr,
    mcast: Option<&MulticastParams>,
) -> io::Result<tokio::net::UdpSocket> {
    let s = new_udp()?;
    s.bind(&SockAddr::from(addr))?;
    if let Some(m) = mcast {
        s.set_multicast_if_v4(&m.interface)?;
        s.set_multicast_ttl_v4(m.ttl)?;
        s.set_multicast_loop_v4(m.loopback)?;
    }
    into_tokio(s)
}

/// The group receive socket: bound to `group:port` with address and port reuse (several
/// nodes may share a host), joined on the configured interface, `IP_MULTICAST_ALL` off.
pub fn group_socket(m: &MulticastParams) -> io::Result<tokio::net::UdpSocket> {
    let s = new_udp()?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(m.group, m.port)))?;
    s.join_multicast_v4(&m.group, &m.interface)?;
    s.set_multicast_all_v4(false)?;
    into_tokio(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn two_group_members_on_loopback_both_receive() {
        // A group and port unlikely to collide with a running cluster.
        let m = MulticastParams {
            group: Ipv4Addr::new(239, 255, 77, 201),
            port: 17_999,
            interface: resolve_interface("127.0.0.1").unwrap(),
            ttl: 1,
            loopback: true,
        };
        let r1 = group_socket(&m).unwrap();
        let r2 = group_socket(&m).unwrap();
        let tx = unicast_socket("127.0.0.1:0".parse().unwrap(), Some(&m)).unwrap();
        tx.send_to(b"hello", (m.group, m.port)).await.unwrap();
        let mut buf = [0u8; 64];
        for r in [&r1, &r2] {
            let (n, from) = tokio::time::timeout(Duration::from_secs(2), r.recv_from(&mut buf))
                .await
                .expect("datagram within 2 s")
                .unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from, tx.local_addr().unwrap());
        }
    }

    #[test]
    fn interface_by_name_and_unknown_name() {
        assert_eq!(resolve_interface("lo").unwrap(), Ipv4Addr::LOCALHOST);
        let err = resolve_interface("no-such-if0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
