//! The `{listen}` address of an instance, without a race for its port.
//!
//! The agent asks the kernel for a free port by binding a socket to `host:0`, and *keeps*
//! that socket (bound, never listening) until the instance is accepting on the address, or
//! its start has failed. Binding and releasing at once would leave a window in which another
//! process can take the port before the instance binds it; holding it closes the window: the
//! kernel gives no held port to anyone who asks for "any port", and a held socket does not
//! stop the instance from binding the same address itself.
//!
//! What this relies on (Linux): both sockets set `SO_REUSEADDR`, and the holder never
//! listens, so the instance's `bind` and `listen` succeed on the held address; a bind to
//! port 0 skips held ports. Servers set `SO_REUSEADDR` on their listening sockets as a rule
//! (Rust's std and tokio, Go, Node, nginx, Python's `http.server`); one that does not gets
//! `EADDRINUSE` and fails its start visibly instead of racing silently.
//!
//! Why not pass the socket itself (`LISTEN_FDS`) or have the instance bind port 0 and report
//! it: any command with `{listen}` must keep working, and most programs take an address to
//! bind, neither an inherited descriptor nor SMART's workload control API.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Socket, Type};

/// A port set aside for an instance: the bound socket, released on drop.
#[derive(Debug)]
pub(crate) struct PortHold {
    _socket: Socket,
    addr: SocketAddr,
}

impl PortHold {
    /// A free port on `host`, held.
    pub(crate) fn any(host: IpAddr) -> std::io::Result<Self> {
        Self::at(SocketAddr::new(host, 0))
    }

    /// `addr` held (a restarted instance keeps its address: held again until it listens).
    pub(crate) fn at(addr: SocketAddr) -> std::io::Result<Self> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_cloexec(true)?;
        s.bind(&addr.into())?;
        let addr = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("held socket has no IP address"))?;
        Ok(Self { _socket: s, addr })
    }

    /// The held address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn an_instance_binds_and_serves_the_held_address_and_keeps_it_after_release() {
        let hold = PortHold::any(LOCAL).unwrap();
        let addr = hold.addr();
        assert_ne!(addr.port(), 0);
        // What a server does (std sets SO_REUSEADDR on Unix): bind the held address, listen.
        let server = TcpListener::bind(addr).expect("the instance binds the held address");
        drop(hold);
        let mut c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = server.accept().unwrap();
        c.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn a_held_port_is_given_to_nobody_asking_for_any_port() {
        let holds: Vec<PortHold> = (0..16).map(|_| PortHold::any(LOCAL).unwrap()).collect();
        for _ in 0..256 {
            let other = TcpListener::bind((LOCAL, 0)).unwrap();
            let port = other.local_addr().unwrap().port();
            assert!(
                holds.iter().all(|h| h.addr().port() != port),
                "port {port} is held"
            );
        }
    }

    #[test]
    fn a_listening_address_cannot_be_held() {
        let server = TcpListener::bind((LOCAL, 0)).unwrap();
        assert!(PortHold::at(server.local_addr().unwrap()).is_err());
    }
}
