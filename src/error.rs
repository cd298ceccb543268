//! The two ways a request can fail: [`ChatError`] is answered with a KIND_ERROR message and the
//! stream carries on; [`Fatal`] ends that one stream with a gRPC status.

use tonic::{Code, Status};

/// A refused request. `code()` is the wire contract's machine-readable reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("room is full ({max} members)")]
    RoomFull { max: usize },
    #[error("rate limited: at most {rate_per_sec} messages/s (burst {burst}) per member")]
    RateLimited { rate_per_sec: f64, burst: u32 },
    #[error("content is {len} bytes, the limit is {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("not a member of this room")]
    NotAMember,
    #[error("{0}")]
    InvalidRoom(&'static str),
    #[error("{0}")]
    InvalidUser(&'static str),
    #[error("already in {max} rooms, the most one session may join")]
    TooManyRooms { max: usize },
    /// Opening the room would exceed `server.max_rooms`; rooms already open are unaffected.
    #[error(
        "the server has {max} rooms open, the most it allows (max_rooms); join an open room or try again later"
    )]
    ServerRoomsFull { max: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    /// Cluster mode: the shared store (Redis) cannot be reached; the session stays open.
    #[error("cluster store unavailable, try again: {0}")]
    Unavailable(String),
}

impl ChatError {
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::RoomFull { .. } => "room_full",
            ChatError::RateLimited { .. } => "rate_limited",
            ChatError::MessageTooLarge { .. } => "message_too_large",
            ChatError::NotAMember => "not_a_member",
            ChatError::InvalidRoom(_) => "invalid_room",
            ChatError::InvalidUser(_) => "invalid_user",
            ChatError::TooManyRooms { .. } => "too_many_rooms",
            ChatError::ServerRoomsFull { .. } => "server_rooms_full",
            ChatError::BadRequest(_) => "bad_request",
            ChatError::Forbidden(_) => "forbidden",
            ChatError::Unavailable(_) => "unavailable",
        }
    }
}

/// Why a stream is ended by the server.
#[derive(Debug, Clone)]
pub enum Fatal {
    /// The session's outbound queue was full when a room pushed to it.
    SlowConsumer,
    /// Nothing received for `idle_timeout_ms`.
    IdleTimeout,
    /// The server is stopping; what is queued is still delivered first.
    Shutdown,
    /// The request stream failed (undecodable frame, frame over the limit, transport error).
    Inbound(Status),
    /// An abuse limit refused the session (e.g. too many sessions of one user).
    Refused(Status),
    /// An operator kicked the session (admin API); the reason may be empty.
    Kicked(String),
}

impl Fatal {
    /// Whether messages already queued are delivered before the status. A slow consumer's
    /// backlog is exactly what must not be kept; a shutdown still delivers what was accepted.
    pub fn drains_first(&self) -> bool {
        matches!(self, Fatal::Shutdown)
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Fatal::SlowConsumer => "slow_consumer",
            Fatal::IdleTimeout => "idle_timeout",
            Fatal::Shutdown => "shutdown",
            // A client that cancels or resets its stream just left.
            Fatal::Inbound(s) if s.code() == Code::Cancelled => "client_closed",
            Fatal::Inbound(_) => "error",
            Fatal::Refused(_) => "refused",
            Fatal::Kicked(_) => "kicked",
        }
    }
}

impl From<&Fatal> for Status {
    fn from(fatal: &Fatal) -> Status {
        match fatal {
            Fatal::SlowConsumer => Status::resource_exhausted(
                "slow consumer: outbound queue full, messages were not read fast enough",
            ),
            Fatal::IdleTimeout => Status::unavailable("idle timeout"),
            Fatal::Shutdown => Status::unavailable("server shutting down"),
            // gRPC convention: a message over the receive limit is RESOURCE_EXHAUSTED.
            Fatal::Inbound(s) if s.code() == Code::OutOfRange => {
                Status::resource_exhausted(s.message().to_string())
            }
            Fatal::Inbound(s) | Fatal::Refused(s) => s.clone(),
            Fatal::Kicked(reason) if reason.is_empty() => Status::permission_denied("kicked"),
            Fatal::Kicked(reason) => Status::permission_denied(format!("kicked: {reason}")),
        }
    }
}
