//! The TCP implementation of the [`Transport`] seam (tokio, `TCP_NODELAY` and keepalive on
//! every socket).
//!
//! Frames are written with one `write_all` each (prefix and payload are already contiguous)
//! and read through a buffered reader; the length prefix is checked against the caller's
//! limit before the payload buffer is allocated.
//!
//! ## Layout
//! - [`TcpTransport`]: the [`Transport`] implementation; private sink, source and listener
//!   types wrap tokio's socket halves.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{BoxFuture, FrameSink, FrameSource, Listener, RawConn, Transport};
use crate::frame::{FrameError, LEN_PREFIX, check_len};

/// TCP transport. Addresses are `host:port` strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

struct TcpSink(OwnedWriteHalf);

impl FrameSink for TcpSink {
    fn send(&mut self, frame: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.0.write_all(&frame).await })
    }
}

struct TcpSource(BufReader<OwnedReadHalf>);

impl FrameSource for TcpSource {
    fn recv(&mut self, max: u32) -> BoxFuture<'_, Result<Vec<u8>, FrameError>> {
        Box::pin(async move {
            let mut prefix = [0u8; LEN_PREFIX];
            let mut got = 0;
            while got < LEN_PREFIX {
                let n = self.0.read(&mut prefix[got..]).await?;
                if n == 0 {
                    return Err(if got == 0 {
                        FrameError::Closed
                    } else {
                        FrameError::Truncated("length prefix")
                    });
                }
                got += n;
            }
            // The limit is checked before the allocation below.
            let len = check_len(prefix, max)?;
            let mut payload = vec![0u8; len];
            match self.0.read_exact(&mut payload).await {
                Ok(_) => Ok(payload),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Err(FrameError::Truncated("payload"))
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Idle time before the first keepalive probe, interval between probes, and probes lost
/// before the kernel declares an idle connection dead: a peer whose host vanished without
/// closing (power loss, partition) is noticed in about 5 s instead of hours, and the peer
/// actor reconnects. Connections with data in flight are covered by request deadlines.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(2))
    .with_interval(Duration::from_secs(1))
    .with_retries(3);

fn configure(stream: &TcpStream) -> io::Result<()> {
    // Small request/response frames must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream).set_tcp_keepalive(&KEEPALIVE)
}

fn raw(stream: TcpStream) -> io::Result<RawConn> {
    configure(&stream)?;
    let peer_addr = stream.peer_addr()?.to_string();
    // A non-blocking peek: whether the peer already sent something (its first frame).
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let spoke = matches!(socket2::SockRef::from(&stream).peek(&mut probe), Ok(n) if n > 0);
    let (r, w) = stream.into_split();
    Ok(RawConn {
        sink: Box::new(TcpSink(w)),
        source: Box::new(TcpSource(BufReader::new(r))),
        peer_addr,
        spoke,
    })
}

struct TcpListen {
    listener: TcpListener,
    local: String,
}

impl Listener for TcpListen {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<RawConn>> {
        Box::pin(async move {
            let (stream, _) = self.listener.accept().await?;
            raw(stream)
        })
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }
}

impl Transport for TcpTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<RawConn>> {
        Box::pin(async move { raw(TcpStream::connect(addr).await?) })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?.to_string();
            Ok(Box::new(TcpListen { listener, local }) as Box<dyn Listener>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_get_nodelay_and_keepalive() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        configure(&s).unwrap();
        assert!(s.nodelay().unwrap());
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(2));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }
}
