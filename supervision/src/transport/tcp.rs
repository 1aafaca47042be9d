//! The TCP implementation of the [`Transport`] seam (tokio, `TCP_NODELAY` on every socket).
//!
//! Frames are written with one `write_all` each (prefix and payload are already contiguous)
//! and read through a buffered reader; the length prefix is checked against the caller's
//! limit before the payload buffer is allocated.
//!
//! ## Layout
//! - [`TcpTransport`]: the [`Transport`] implementation; private sink, source and listener
//!   types wrap tokio's socket halves.

use std::io;

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

fn raw(stream: TcpStream) -> io::Result<RawConn> {
    // Small request/response frames must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?.to_string();
    let (r, w) = stream.into_split();
    Ok(RawConn {
        sink: Box::new(TcpSink(w)),
        source: Box::new(TcpSource(BufReader::new(r))),
        peer_addr,
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
