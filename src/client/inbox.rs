//! The driver's reading side: each server message matched to the request it answers (by the
//! request number in its `ref`), deduplicated against the room's position, and turned into
//! replies and [`Event`]s.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    connection::Failure,
    driver::Driver,
    event::{Ack, ChatMessage, Event, Joined, ServerError},
    pending::{ReplyTx, Request},
    rooms::Status,
};
use crate::proto::{Kind, Message};

/// The ERROR code whose request may have gone through, or may go through on another try:
/// such a request is sent again on a new stream (a CHAT with its `ref`, so it posts once).
const TRY_AGAIN: &str = "unavailable";

/// The ERROR code of the rate limit, which a resend is checked against too.
const RATE_LIMITED: &str = "rate_limited";

/// How long a resent CHAT refused by the rate limit waits before it goes again; the member's
/// bucket refills meanwhile (`rate_per_sec`).
const RATE_RETRY: Duration = Duration::from_secs(1);

impl Driver {
    /// Handles one server message; `Some` when it means the stream should be given up.
    pub(super) async fn on_message(&mut self, message: Message) -> Option<Failure> {
        let number = self.refs.number(&message.r#ref);
        match message.kind() {
            Kind::Chat | Kind::Unspecified => self.on_chat(message, number).await,
            Kind::Joined => self.on_joined(message, number).await,
            Kind::Left => self.on_left(message, number).await,
            Kind::Error => return self.on_error(message, number).await,
            Kind::Pong => self.on_pong(number).await,
            Kind::Join => {
                let (room, user) = (message.room, message.user);
                self.emit(Event::MemberJoined { room, user }).await;
            }
            Kind::Leave => {
                let (room, user) = (message.room, message.user);
                self.emit(Event::MemberLeft { room, user }).await;
            }
            Kind::Ping => {}
        }
        None
    }

    async fn on_chat(&mut self, message: Message, number: Option<u64>) {
        let fresh = self
            .rooms
            .accept(&message.room, &message.epoch, message.seq, message.replay);
        if let Some((_, Request::Chat { reply, .. })) = self.take(number, is_chat) {
            let _ = reply.send(Ok(Ack {
                room: message.room.clone(),
                id: message.id.clone(),
                seq: message.seq,
                epoch: message.epoch.clone(),
                timestamp: message.timestamp,
            }));
        }
        if fresh {
            self.emit(Event::Message(ChatMessage {
                room: message.room,
                user: message.user,
                content: message.content,
                id: message.id,
                seq: message.seq,
                epoch: message.epoch,
                timestamp: message.timestamp,
                replay: message.replay,
            }))
            .await;
        }
    }

    async fn on_joined(&mut self, message: Message, number: Option<u64>) {
        let (room, epoch, seq) = (&message.room, &message.epoch, message.seq);
        let truncated = message.replay_truncated;
        match self.take(number, |r| {
            matches!(r, Request::Join { .. } | Request::Resume { .. })
        }) {
            Some((
                number,
                Request::Join {
                    room: asked, reply, ..
                },
            )) => {
                self.rooms.rename(&asked, room);
                self.rooms
                    .on_joined(room, epoch, seq, truncated, number, false);
                let joined = Joined {
                    room: message.room.clone(),
                    members: message.members,
                    seq,
                    epoch: message.epoch.clone(),
                };
                let _ = reply.send(Ok(joined.clone()));
                self.emit(Event::Joined(joined)).await;
            }
            Some((number, _resume)) => {
                self.rooms
                    .on_joined(room, epoch, seq, truncated, number, true);
            }
            None => {}
        }
    }

    async fn on_left(&mut self, message: Message, number: Option<u64>) {
        if let Some((_, Request::Leave { reply, .. })) = self.take(number, is_leave) {
            let _ = reply.send(Ok(()));
        }
        self.rooms.remove(&message.room);
        let (room, reason) = (message.room, message.content);
        self.emit(Event::Left { room, reason }).await;
    }

    async fn on_pong(&mut self, number: Option<u64>) {
        if let Some((marker, _)) = self.take(number, |r| matches!(r, Request::Marker)) {
            // The server has answered everything sent before the marker on this stream.
            self.backoff.reset();
            for resumed in self.rooms.end_replays(marker) {
                self.emit(resumed).await;
            }
        }
    }

    async fn on_error(&mut self, message: Message, number: Option<u64>) -> Option<Failure> {
        let error = ServerError {
            code: message.code,
            room: message.room,
            reason: message.content,
        };
        let Some((number, request)) = self.take(number, |_| true) else {
            self.emit(Event::Error(error)).await;
            return None;
        };
        if error.code == TRY_AGAIN && !matches!(request, Request::Marker | Request::Leave { .. }) {
            self.pending.restore(number, request);
            let reason = format!("{TRY_AGAIN} ({}): {}", error.room, error.reason);
            return Some(Failure::Retry(reason));
        }
        if error.code == RATE_LIMITED && matches!(request, Request::Chat { resent: true, .. }) {
            self.pending.restore(number, request);
            self.retry.push(number);
            self.retry_at
                .get_or_insert_with(|| Instant::now() + RATE_RETRY);
            return None;
        }
        match request {
            Request::Join { room, reply, .. } => {
                if self.rooms.status(&room) == Some(Status::Joining) {
                    self.rooms.remove(&room);
                }
                self.answer(reply, error).await;
            }
            Request::Leave { room, reply, .. } => {
                // Refused only when not a member: the client is out of the room either way.
                self.rooms.remove(&room);
                self.answer(reply, error).await;
            }
            Request::Chat { reply, .. } => self.answer(reply, error).await,
            // A room that cannot be joined again (full, forbidden…): it is gone for this client.
            Request::Resume { room } => {
                self.rooms.remove(&room);
                self.emit(Event::Error(error)).await;
            }
            Request::Marker => self.emit(Event::Error(error)).await,
        }
        None
    }

    /// The ERROR goes to the request's future, or becomes an event if nobody waits for it.
    async fn answer<T>(&self, reply: ReplyTx<T>, error: ServerError) {
        if reply.is_closed() {
            self.emit(Event::Error(error)).await;
        } else {
            let _ = reply.send(Err(error.into()));
        }
    }

    /// The waiting request `number` names, if it is one `wanted`.
    fn take(
        &mut self,
        number: Option<u64>,
        wanted: impl Fn(&Request) -> bool,
    ) -> Option<(u64, Request)> {
        let number = number?;
        let request = self.pending.take(number)?;
        if wanted(&request) {
            Some((number, request))
        } else {
            self.pending.restore(number, request);
            None
        }
    }
}

fn is_chat(request: &Request) -> bool {
    matches!(request, Request::Chat { .. })
}

fn is_leave(request: &Request) -> bool {
    matches!(request, Request::Leave { .. })
}
