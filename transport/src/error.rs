//! [`FrameError`]: every way a frame (or a handshake message, or a sealed payload) is
//! refused. Its own module so that the frame codec and the cipher both use it without
//! importing each other.

use smart_proto::NodeId;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or encoded) payload length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The bytes end before the frame does.
    #[error("frame truncated: {0} incomplete")]
    Truncated(&'static str),
    /// The payload is not a valid postcard encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[source] postcard::Error),
    /// Bytes left over after the value: refused so that one frame has one meaning.
    #[error("{0} unexpected trailing bytes in frame")]
    TrailingBytes(usize),
    /// The envelope version is not ours.
    #[error("unsupported protocol version {got} (this node speaks {expected})")]
    BadVersion {
        /// The version byte received.
        got: u8,
        /// [`crate::frame::PROTOCOL_VERSION`].
        expected: u8,
    },
    /// Decryption failed: forged, corrupted, replayed, reordered, reflected, or sealed
    /// under another connection's keys.
    #[error("frame authentication failed (forged, corrupted or replayed frame)")]
    BadTag,
    /// The sequence number did not grow: a replayed or reordered frame.
    #[error("frame sequence number {got} is not above {last}: replayed or reordered")]
    Replayed {
        /// The received sequence number.
        got: u64,
        /// The last accepted one.
        last: u64,
    },
    /// The envelope names someone else than the peer authenticated by the handshake.
    #[error("frame claims to come from {claimed} but the connection is authenticated as {actual}")]
    WrongSender {
        /// `from` in the envelope.
        claimed: NodeId,
        /// The authenticated identity.
        actual: NodeId,
    },
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True for errors caused by the bytes a peer sent (counted as rejected frames), false
    /// for connection-level events (close, I/O error).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, FrameError::Closed | FrameError::Io(_))
    }
}
