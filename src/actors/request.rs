//! Requests parsed before they are dispatched: one pure function from a wire message to a
//! typed [`Request`] or the [`Refusal`] to send back. The Session actor decides who the stream
//! is and what its token allows; this module only applies the checks, always in the same order.

use crate::{
    error::ChatError,
    names::{EPOCH_BYTES, MAX_ROOM_BYTES, RoomName},
    proto::{self, Kind},
};

/// Longest `ref` a client may attach; it is echoed back, so it is bounded.
pub const MAX_REF_BYTES: usize = 128;

/// What a client asked for, with every field already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `room` as sent (possibly empty): a PONG only echoes it.
    Ping {
        room: String,
    },
    Join {
        room: RoomName,
        since_seq: u64,
        /// The epoch `since_seq` counts in; empty from clients that do not know epochs.
        epoch: String,
    },
    Leave {
        room: RoomName,
    },
    /// `content` is never empty.
    Chat {
        room: RoomName,
        content: String,
    },
}

/// A parsed request and the `ref` its replies carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub request: Request,
    pub r#ref: String,
}

/// Why a request is refused, with the room and `ref` the error reply names.
#[derive(Debug)]
pub struct Refusal {
    pub error: ChatError,
    /// As sent (cut to [`MAX_ROOM_BYTES`]), or the parsed room once it is known; empty means the
    /// default room.
    pub room: String,
    pub r#ref: String,
}

/// What the session knows about the stream when a request arrives.
pub struct Caller<'a> {
    /// `Err` when the stream is not (validly) named: it may PING and nothing else.
    pub named: Result<(), ChatError>,
    /// Whether the token lets the session JOIN or CHAT in a room (always true without a claim).
    pub may_use: &'a dyn Fn(&RoomName) -> bool,
}

/// Parses one request. The checks run in this order, and the first that fails decides the
/// reply: the `ref`'s length, the kind, the caller's name, the room, the token's rooms claim
/// (not for LEAVE), then a CHAT's content or a JOIN's epoch. A room echoed back as sent (PONG,
/// and refusals before the room is parsed) is cut to [`MAX_ROOM_BYTES`]: no valid name is
/// longer, and a frame may carry a megabyte of one.
pub fn parse(
    msg: proto::Message,
    default_room: &RoomName,
    caller: &Caller<'_>,
) -> Result<Parsed, Refusal> {
    let proto::Message {
        kind,
        room,
        content,
        r#ref,
        since_seq,
        epoch,
        ..
    } = msg;
    if r#ref.len() > MAX_REF_BYTES {
        let error = ChatError::BadRequest(format!("ref is longer than {MAX_REF_BYTES} bytes"));
        return Err(Refusal {
            error,
            room: echoed(room),
            r#ref: String::new(),
        });
    }
    let refuse = |error, room: String, r#ref| Err(Refusal { error, room, r#ref });
    let kind = match Kind::try_from(kind) {
        Ok(Kind::Ping) => {
            let request = Request::Ping { room: echoed(room) };
            return Ok(Parsed { request, r#ref });
        }
        Ok(Kind::Unspecified | Kind::Chat) => Kind::Chat,
        Ok(kind @ (Kind::Join | Kind::Leave)) => kind,
        _ => {
            let error = ChatError::BadRequest(format!(
                "kind {kind} is not something a client may send (CHAT, JOIN, LEAVE, PING)"
            ));
            return refuse(error, echoed(room), r#ref);
        }
    };
    if let Err(error) = &caller.named {
        return refuse(error.clone(), echoed(room), r#ref);
    }
    let target = match target_room(kind, &room, default_room) {
        Ok(target) => target,
        Err(error) => return refuse(error, echoed(room), r#ref),
    };
    if kind != Kind::Leave && !(caller.may_use)(&target) {
        let error = ChatError::Forbidden("the token's `rooms` claim does not include this room");
        return refuse(error, target.as_str().to_owned(), r#ref);
    }
    let request = match kind {
        Kind::Join if epoch.len() > EPOCH_BYTES => {
            let error = ChatError::BadRequest(format!("epoch is longer than {EPOCH_BYTES} bytes"));
            return refuse(error, target.as_str().to_owned(), r#ref);
        }
        Kind::Join => Request::Join {
            room: target,
            since_seq,
            epoch,
        },
        Kind::Leave => Request::Leave { room: target },
        _ if content.is_empty() => {
            let error = ChatError::BadRequest("CHAT needs `content`".into());
            return refuse(error, target.as_str().to_owned(), r#ref);
        }
        _ => Request::Chat {
            room: target,
            content,
        },
    };
    Ok(Parsed { request, r#ref })
}

/// `room` cut to [`MAX_ROOM_BYTES`] at a character boundary, in an allocation of its own size.
fn echoed(room: String) -> String {
    if room.len() <= MAX_ROOM_BYTES {
        return room;
    }
    let cut = (0..=MAX_ROOM_BYTES)
        .rev()
        .find(|&i| room.is_char_boundary(i))
        .unwrap_or(0);
    room[..cut].to_string()
}

/// An empty `room` means the default room, except for LEAVE, which must say which.
fn target_room(kind: Kind, room: &str, default_room: &RoomName) -> Result<RoomName, ChatError> {
    if room.is_empty() {
        if kind == Kind::Leave {
            return Err(ChatError::BadRequest("LEAVE needs a `room`".into()));
        }
        return Ok(default_room.clone());
    }
    RoomName::parse(room)
}

#[cfg(test)]
mod tests;
