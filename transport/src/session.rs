//! An authenticated connection after the handshake: a writer task that stamps, seals and
//! sends [`Message`]s in order, and a reader that opens and checks incoming frames.
//!
//! The writer assigns the sequence numbers, so every sender on the connection (request
//! callers, handler tasks, notification pushers) goes through one ordered queue and the
//! receiver's "sequence must grow" check holds. The reader refuses (and counts) any frame
//! that is oversized, truncated, forged, replayed, malformed, or sent under another identity;
//! its owner then closes the connection.
//!
//! ## Layout
//! - [`establish`]: spawns the writer task and returns the [`Established`] parts.
//! - [`SessionReader`]: opens and checks incoming frames.
//! - [`AbortOnDrop`]: ties task lifetimes to their owner.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::handshake::{Identity, Session};
use super::noise::Cipher;
use super::{Counters, Endpoint, FrameSource, Message, MessageOf, Protocol, RawConn};
use crate::frame::{Envelope, FrameError, PROTOCOL_VERSION, open_payload, seal_frame};

/// A task handle that aborts its task when dropped, so connection tasks never outlive their
/// owner (a stopped server, a stopped peer actor, a dropped client).
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Called by the writer when a request could not be sealed (e.g. too large), with its id.
pub type NotSentHook = Box<dyn Fn(u64, FrameError) + Send + Sync>;

/// The receiving side of an authenticated connection.
pub struct SessionReader<P: Protocol> {
    source: Box<dyn FrameSource>,
    cipher: Arc<Cipher>,
    last_seq: u64,
    peer: Identity,
    max: u32,
    counters: Arc<Counters>,
    _p: PhantomData<fn() -> P>,
}

impl<P: Protocol> SessionReader<P> {
    /// The next accepted envelope. Any error means the connection must be closed; errors
    /// caused by the peer's bytes are counted in `frames_rejected`.
    pub async fn next(&mut self) -> Result<Envelope<MessageOf<P>>, FrameError> {
        let r = self.next_inner().await;
        match &r {
            Ok(_) => Counters::inc(&self.counters.frames_received),
            Err(e) if e.is_bad_input() => Counters::inc(&self.counters.frames_rejected),
            Err(_) => {}
        }
        r
    }

    async fn next_inner(&mut self) -> Result<Envelope<MessageOf<P>>, FrameError> {
        let payload = self.source.recv(self.max).await?;
        let env: Envelope<MessageOf<P>> = open_payload(&payload, &self.cipher)?;
        if env.seq <= self.last_seq {
            return Err(FrameError::Replayed {
                got: env.seq,
                last: self.last_seq,
            });
        }
        let (from, incarnation) = self.peer.envelope_sender();
        if env.from != from || env.incarnation != incarnation {
            return Err(FrameError::WrongSender {
                claimed: env.from,
                actual: from,
            });
        }
        self.last_seq = env.seq;
        Ok(env)
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Identity {
        self.peer
    }
}

/// An authenticated connection, split into its parts.
pub struct Established<P: Protocol> {
    /// The authenticated peer.
    pub peer: Identity,
    /// Queue of outgoing messages (sealed and sent in order by the writer task).
    pub tx: mpsc::Sender<MessageOf<P>>,
    /// Incoming messages.
    pub reader: SessionReader<P>,
    /// The writer task; dropping this closes the sending half.
    pub writer: AbortOnDrop,
    /// Frames the writer has sent on this connection (its outbound activity).
    pub sent: Arc<AtomicU64>,
}

/// Turns a handshaken raw connection into an [`Established`] one.
pub fn establish<P: Protocol>(
    raw: RawConn,
    session: Session,
    ep: &Endpoint,
    not_sent: Option<NotSentHook>,
) -> Established<P> {
    let (tx, mut rx) = mpsc::channel::<MessageOf<P>>(ep.limits.send_queue.max(1));
    let RawConn {
        mut sink, source, ..
    } = raw;
    let (from, incarnation) = ep.identity.envelope_sender();
    let epoch = ep.epoch.clone();
    let counters = ep.counters.clone();
    let cipher = session.cipher.clone();
    let max = ep.limits.max_frame;
    let peer = session.peer;
    let sent = Arc::new(AtomicU64::new(0));
    let sent_here = sent.clone();
    let writer = tokio::spawn(async move {
        let mut seq = 0u64;
        while let Some(msg) = rx.recv().await {
            let kind = match &msg {
                Message::Request { id, .. } => Some((true, *id)),
                Message::Response { id, .. } => Some((false, *id)),
                _ => None,
            };
            seq += 1;
            let env = Envelope {
                version: PROTOCOL_VERSION,
                from,
                incarnation,
                epoch: epoch.load(std::sync::atomic::Ordering::Relaxed),
                seq,
                body: msg,
            };
            let frame = match seal_frame(&env, &cipher, max) {
                Ok(f) => f,
                Err(e) => {
                    // Nothing was sent, so the sequence number is not used up.
                    seq -= 1;
                    tracing::warn!(%peer, cause = %e, "message not sent");
                    match kind {
                        Some((true, id)) => {
                            if let Some(hook) = &not_sent {
                                hook(id, e);
                            }
                        }
                        Some((false, id)) => {
                            // Tell the requester instead of letting it time out.
                            seq += 1;
                            let fault = Envelope {
                                version: PROTOCOL_VERSION,
                                from,
                                incarnation,
                                epoch: env.epoch,
                                seq,
                                body: MessageOf::<P>::Fault {
                                    id,
                                    error: smart_proto::error::RemoteError::Internal {
                                        reason: format!("response not sent: {e}"),
                                    },
                                },
                            };
                            let Ok(f) = seal_frame(&fault, &cipher, max) else {
                                break;
                            };
                            if sink.send(f).await.is_err() {
                                break;
                            }
                            Counters::inc(&counters.frames_sent);
                        }
                        None => Counters::inc(&counters.notifications_dropped),
                    }
                    continue;
                }
            };
            if let Err(e) = sink.send(frame).await {
                tracing::debug!(%peer, cause = %e, "connection write failed");
                break;
            }
            Counters::inc(&counters.frames_sent);
            sent_here.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    Established {
        peer,
        tx,
        reader: SessionReader {
            source,
            cipher: session.cipher,
            last_seq: 0,
            peer,
            max,
            counters: ep.counters.clone(),
            _p: PhantomData,
        },
        writer: AbortOnDrop(writer),
        sent,
    }
}
