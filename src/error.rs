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
    /// A JOIN kept finding its room stopping (empty-room TTL) and gave up. The server's state,
    /// not the request, is at fault, and the same JOIN succeeds a moment later: `unavailable`,
    /// the code clients already retry on, not the client's `bad_request`.
    #[error("room is restarting, try again")]
    RoomRestarting,
}

impl ChatError {
    /// Every [`code`](ChatError::code), so each refusal counter can be exported at 0 from
    /// start-up (dashboards and `absent()` alerts need the series before the first refusal).
    pub const CODES: &'static [&'static str] = &[
        "room_full",
        "rate_limited",
        "message_too_large",
        "not_a_member",
        "invalid_room",
        "invalid_user",
        "too_many_rooms",
        "bad_request",
        "forbidden",
        "unavailable",
        "server_rooms_full",
    ];

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
            ChatError::Unavailable(_) | ChatError::RoomRestarting => "unavailable",
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
    /// The session's token (jwt mode) reached its `exp`.
    TokenExpired,
}

impl Fatal {
    /// Whether messages already queued are delivered before the status. A slow consumer's
    /// backlog is exactly what must not be kept; a shutdown still delivers what was accepted.
    pub fn drains_first(&self) -> bool {
        matches!(self, Fatal::Shutdown)
    }

    /// Every [`reason`](Fatal::reason), so each end counter can be exported at 0 from start-up.
    pub const REASONS: &'static [&'static str] = &[
        "client_closed",
        "slow_consumer",
        "idle_timeout",
        "shutdown",
        "error",
        "refused",
        "kicked",
        "token_expired",
    ];

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
            Fatal::TokenExpired => "token_expired",
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
            // The client is expected to get a fresh token and open a new stream.
            Fatal::TokenExpired => Status::unauthenticated("token expired"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant. The matches have no wildcard, so a new variant does not compile
    /// until it is listed here, and the tests below then make sure its code or reason is in
    /// the constant lists.
    fn every_error() -> Vec<ChatError> {
        let all = vec![
            ChatError::RoomFull { max: 1 },
            ChatError::RateLimited {
                rate_per_sec: 1.0,
                burst: 1,
            },
            ChatError::MessageTooLarge { len: 2, max: 1 },
            ChatError::NotAMember,
            ChatError::InvalidRoom("x"),
            ChatError::InvalidUser("x"),
            ChatError::TooManyRooms { max: 1 },
            ChatError::BadRequest("x".into()),
            ChatError::Forbidden("x"),
            ChatError::Unavailable("x".into()),
            ChatError::RoomRestarting,
            ChatError::ServerRoomsFull { max: 1 },
        ];
        for error in &all {
            match error {
                ChatError::RoomFull { .. }
                | ChatError::RateLimited { .. }
                | ChatError::MessageTooLarge { .. }
                | ChatError::NotAMember
                | ChatError::InvalidRoom(_)
                | ChatError::InvalidUser(_)
                | ChatError::TooManyRooms { .. }
                | ChatError::BadRequest(_)
                | ChatError::Forbidden(_)
                | ChatError::Unavailable(_)
                | ChatError::RoomRestarting
                | ChatError::ServerRoomsFull { .. } => {}
            }
        }
        all
    }

    fn every_fatal() -> Vec<Fatal> {
        let all = vec![
            Fatal::SlowConsumer,
            Fatal::IdleTimeout,
            Fatal::Shutdown,
            Fatal::Inbound(Status::cancelled("gone")),
            Fatal::Inbound(Status::internal("broken")),
            Fatal::Refused(Status::resource_exhausted("limit")),
            Fatal::Kicked(String::new()),
            Fatal::TokenExpired,
        ];
        for fatal in &all {
            match fatal {
                Fatal::SlowConsumer
                | Fatal::IdleTimeout
                | Fatal::Shutdown
                | Fatal::Inbound(_)
                | Fatal::Refused(_)
                | Fatal::Kicked(_)
                | Fatal::TokenExpired => {}
            }
        }
        all
    }

    #[test]
    fn codes_lists_every_error_code_once() {
        let mut codes: Vec<_> = every_error().iter().map(ChatError::code).collect();
        codes.sort_unstable();
        // Several variants may share a code (both "try again" errors are `unavailable`).
        codes.dedup();
        let mut listed = ChatError::CODES.to_vec();
        listed.sort_unstable();
        assert_eq!(codes, listed);
    }

    #[test]
    fn a_room_restarting_is_unavailable_not_the_clients_bad_request() {
        let error = ChatError::RoomRestarting;
        assert_eq!(error.code(), "unavailable");
        assert_eq!(error.to_string(), "room is restarting, try again");
    }

    #[test]
    fn reasons_lists_every_end_reason_once() {
        // The session's own fallback when the stream ended without a fatal.
        let mut reasons = vec!["client_closed"];
        reasons.extend(every_fatal().iter().map(Fatal::reason));
        reasons.sort_unstable();
        reasons.dedup();
        let mut listed = Fatal::REASONS.to_vec();
        listed.sort_unstable();
        assert_eq!(reasons, listed);
        assert_eq!(Fatal::TokenExpired.reason(), "token_expired");
        let status = Status::from(&Fatal::TokenExpired);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("token expired"));
    }
}
