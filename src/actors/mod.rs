//! The two actors and the mail between them.
//!
//! | mail           | from → to        | reply                      | why                                        |
//! |----------------|------------------|----------------------------|--------------------------------------------|
//! | `Inbound`      | gRPC edge → Session | `()` once handled       | one request; awaited, so requests stay in order and a flood is held back by HTTP/2 flow control |
//! | `InboundEnded` | gRPC edge → Session | `()`                    | half-close (clean end) or a broken request stream |
//! | `Join`         | Session → Room   | `Result<(), ChatError>`    | membership; the room pushes JOINED and the replay itself |
//! | `Post`         | Session → Room   | `Result<(), ChatError>`    | a CHAT; the room pushes the broadcast and the sender's ack |
//! | `Leave`        | Session → Room   | `Result<(), ChatError>`    | LEAVE request, or leave-all when a session stops |
//! | `Evicted`      | Room → Session   | `()`                       | the room dropped this slow consumer; the session ends |
//! | `End`          | server → Session | `()`                       | shutdown: end the stream after its queue drains |
//! | `Reconfigure`  | server → Room    | `()`                       | configuration reloaded: re-read the limits |
//! | `Inspect`      | admin → Room     | `RoomSnapshot`             | ListRooms / GetRoom / Kick: seq and members |
//! | `Announce`     | admin → Room     | `Result<(seq, id), ChatError>` | a CHAT from "system"                   |
//! | `Close`        | admin → Room     | `usize` (members removed)  | CloseRoom: LEFT to everyone, then stop     |
//! | `Kick`         | admin → Session  | `()`                       | leave a room (or all), or end the stream   |
//! | `Removed`      | Room → Session   | `()`                       | the room closed: forget the membership     |
//!
//! Rooms never wait on sessions: everything a room sends a member goes through the member's
//! [`SessionTx`] with `try_deliver`, and its mail through the narrow [`SessionHandle`].
//!
//! Dependency order inside (each names only those after it): `session` → `registry` → `room`
//! → `env` → this mail, `request`. The mail names neither actor: a room knows a member's session
//! by a [`SessionHandle`] and a session knows which room instance closed by its [`RoomId`].

pub mod env;
pub mod registry;
pub mod request;
pub mod room;
pub mod session;

use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message, Recipient};

use crate::{
    edge::outbound::SessionTx,
    error::{ChatError, Fatal},
    names::{RoomName, SessionId, UserName},
    proto,
};

/// One request read from the stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub proto::Message);

/// The request stream ended: `None` on half-close, the failure otherwise.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundEnded(pub Option<Fatal>);

#[derive(Message, Clone)]
#[rtype(result = "Result<(), ChatError>")]
pub struct Join {
    pub session: SessionId,
    pub user: UserName,
    pub tx: SessionTx,
    /// Shared: a JOIN may be tried on several room instances, and each member keeps one.
    pub addr: Arc<SessionHandle>,
    pub since_seq: u64,
    /// The epoch `since_seq` counts in (empty: a client that does not know epochs).
    pub epoch: String,
    /// `Some(ref)`: answer with JOINED and the replay. `None`: the silent auto-join of the
    /// default room by a client that only ever sends CHATs.
    pub ack: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<(), ChatError>")]
pub struct Post {
    pub session: SessionId,
    pub content: String,
    pub r#ref: String,
}

#[derive(Message)]
#[rtype(result = "Result<(), ChatError>")]
pub struct Leave {
    pub session: SessionId,
    /// `Some(ref)`: a LEAVE request, answered with LEFT. `None`: the session is ending.
    pub ack: Option<String>,
    /// Content of the LEFT: empty for a client's own LEAVE, the operator's reason for a kick.
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Evicted {
    pub room: RoomName,
}

/// Ends the session with `0` (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct End(pub Fatal);

/// The configuration was reloaded: the room re-reads its limits.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure;

/// A room's state as an operator sees it.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub last_seq: u64,
    pub member_count: usize,
    /// Filled only when asked for (`Inspect { members: true }`).
    pub members: Vec<(SessionId, UserName, Recipient<Kick>)>,
}

#[derive(Message)]
#[rtype(result = "RoomSnapshot")]
pub struct Inspect {
    pub members: bool,
}

/// A CHAT from [`crate::names::SYSTEM_USER`], outside any membership and rate limit.
#[derive(Message)]
#[rtype(result = "Result<(u64, String), ChatError>")]
pub struct Announce {
    pub content: String,
}

/// Removes every member (each gets LEFT with `reason`) and stops the room.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Close {
    pub reason: String,
}

/// An operator's kick. `room: None` means every room (leave) or the stream itself (disconnect).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Kick {
    pub room: Option<RoomName>,
    pub disconnect: bool,
    pub reason: String,
}

/// The room `room`, instance `id`, closed and removed this session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Removed {
    pub room: RoomName,
    pub id: RoomId,
}

/// One room actor among those that have had a name: a room started after one of the same name
/// stopped has another id. Given by the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId(pub u64);

/// What a room, and an operator reading a room, may send a member's session: exactly that mail,
/// so neither the rooms nor this module know the Session actor. Built once per session and
/// shared. One address behind it rather than a recipient per kind of mail: every copy of an
/// actix address allocates twice, and every open session has one of these.
pub struct SessionHandle {
    mail: Box<dyn SessionMail>,
}

/// The Session actor's address, seen only through the mail a room may send it.
trait SessionMail: Send + Sync {
    fn evicted(&self, evicted: Evicted);
    fn removed(&self, removed: Removed);
    fn kick(&self) -> Recipient<Kick>;
}

impl<A> SessionMail for Addr<A>
where
    A: Actor<Context = Context<A>> + Handler<Evicted> + Handler<Removed> + Handler<Kick>,
{
    fn evicted(&self, evicted: Evicted) {
        self.do_send(evicted);
    }

    fn removed(&self, removed: Removed) {
        self.do_send(removed);
    }

    fn kick(&self) -> Recipient<Kick> {
        self.clone().recipient()
    }
}

impl SessionHandle {
    /// The handle of the actor at `addr` (the Session actor; a stand-in in tests).
    pub fn of<A>(addr: Addr<A>) -> SessionHandle
    where
        A: Actor<Context = Context<A>> + Handler<Evicted> + Handler<Removed> + Handler<Kick>,
    {
        SessionHandle {
            mail: Box::new(addr),
        }
    }

    /// Tells the session a room dropped it as a slow consumer (`do_send`: the session must hear
    /// of it even when its mailbox is busy).
    pub fn evicted(&self, evicted: Evicted) {
        self.mail.evicted(evicted);
    }

    /// Tells the session a room closed with it inside (`do_send`, as above).
    pub fn removed(&self, removed: Removed) {
        self.mail.removed(removed);
    }

    /// Where an operator's kick for this session goes.
    pub fn kick(&self) -> Recipient<Kick> {
        self.mail.kick()
    }
}
