//! What the client library hands to its user: the [`Event`]s of the event stream and the
//! replies of `join` and `post` ([`Joined`], [`Ack`]). Plain data, free of the wire types.

use std::time::Duration;

use super::error::ClientError;

/// One thing that happened, in the order it happened. Messages of one room arrive in `seq`
/// order, each once, also across reconnects.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stream to the server is open (the first one, or again after [`Event::Reconnecting`]).
    Connected,
    /// The connection broke (`reason`); attempt `attempt` to open a new one starts after
    /// `delay` (exponential backoff with full jitter).
    Reconnecting {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// After a reconnect, `room` was joined again and its replay is over: `replayed` messages
    /// missed while away were delivered (as [`Event::Message`] with `replay` set, before this).
    /// `truncated`: some messages are gone for good (no longer retained, or the room's
    /// sequence started over, e.g. after a server restart).
    Resumed {
        room: String,
        replayed: u64,
        truncated: bool,
    },
    /// A room message (a CHAT), the client's own included.
    Message(ChatMessage),
    /// Someone else joined a room this client is in.
    MemberJoined { room: String, user: String },
    /// Someone else left a room this client is in.
    MemberLeft { room: String, user: String },
    /// A `join` was answered (also delivered to the `join` future).
    Joined(Joined),
    /// This client is out of `room`: its `leave` was answered, or an operator removed it
    /// (`reason` says why then).
    Left { room: String, reason: String },
    /// An ERROR nobody waits for: the reply to a request whose future was dropped, or one the
    /// server sent on its own.
    Error(ServerError),
    /// The client has stopped: `None` after `close`, otherwise the error that ended it. The
    /// last event; the stream ends after it.
    Closed(Option<ClientError>),
}

/// A room message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub room: String,
    /// The author, as the server knows them.
    pub user: String,
    pub content: String,
    /// Server-assigned UUID (v7).
    pub id: String,
    /// The room's sequence number (1, 2, 3… within one `epoch`).
    pub seq: u64,
    /// This incarnation of the room's sequence (empty from a server without epochs).
    pub epoch: String,
    /// Server time, Unix milliseconds.
    pub timestamp: i64,
    /// History replayed on a join or resume rather than live traffic.
    pub replay: bool,
}

/// A room joined: the JOINED reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: String,
    /// Users in the room, this one included (at most the server's `max_members_listed`).
    pub members: Vec<String>,
    /// The room's last seq when it was joined; the replay ends there.
    pub seq: u64,
    pub epoch: String,
}

/// A CHAT accepted by its room: the acknowledgement of `post`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub room: String,
    pub id: String,
    pub seq: u64,
    pub epoch: String,
    pub timestamp: i64,
}

/// An ERROR from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The contract's code (`rate_limited`, `not_a_member`…).
    pub code: String,
    pub room: String,
    /// The reason in words.
    pub reason: String,
}

impl From<ServerError> for ClientError {
    fn from(error: ServerError) -> ClientError {
        ClientError::Refused {
            code: error.code,
            room: error.room,
            reason: error.reason,
        }
    }
}
