//! The driver's writing side: the request each command makes, what a new stream sends first
//! (every room joined again from its position, every unanswered request again with its `ref`,
//! then the marker PING that ends the replays), and resent CHATs tried again after the rate
//! limit refused them.

use std::collections::HashSet;

use super::{driver::Driver, event::Event, handle::Command, pending::Request, rooms::Status};
use crate::proto::{Kind, Message};

impl Driver {
    /// Starts a new stream: rejoins the rooms from where they were, sends every unanswered
    /// request again (same `ref`), then a marker PING whose PONG ends the rejoins' replays.
    pub(super) async fn resume(&mut self) {
        let earlier = self.pending.drain();
        let mut joining = HashSet::new();
        for room in self.rooms.joined() {
            let number = self.pending.add(Request::Resume { room: room.clone() });
            self.outbox.push_back(self.join_message(&room, number));
            joining.insert(room);
        }
        let mut left = Vec::new();
        for (number, mut request) in earlier {
            if let Request::Chat { resent, .. } = &mut request {
                *resent = true;
            }
            let message = match &request {
                // The broken stream's own bookkeeping, made again above and below.
                Request::Resume { .. } | Request::Marker => continue,
                Request::Join { room, .. } => {
                    joining.insert(room.clone());
                    self.join_message(room, number)
                }
                Request::Chat { room, content, .. } => {
                    let r#ref = self.refs.of(number);
                    self.request(Kind::Chat, room, content.clone(), r#ref)
                }
                Request::Leave { room, .. } if joining.contains(room) => {
                    self.request(Kind::Leave, room, String::new(), self.refs.of(number))
                }
                // The session that was in the room is gone, and so is the membership.
                Request::Leave { room, .. } => {
                    left.push(room.clone());
                    self.rooms.remove(room);
                    if let Request::Leave { reply, .. } = request {
                        let _ = reply.send(Ok(()));
                    }
                    continue;
                }
            };
            self.outbox.push_back(message);
            self.pending.restore(number, request);
        }
        self.push_marker();
        for room in left {
            let reason = String::new();
            self.emit(Event::Left { room, reason }).await;
        }
    }

    /// A command from a handle; `connected`: write it on the current stream now (otherwise
    /// the next stream's `resume` sends it).
    pub(super) fn command(&mut self, command: Command, connected: bool) {
        let (message, is_join) = match command {
            Command::Close => {
                self.closing = true;
                return;
            }
            Command::Join { room, reply, slot } => {
                self.rooms.set_status(&room, Status::Joining);
                let number = self.pending.add(Request::Join {
                    room: room.clone(),
                    reply,
                    _slot: slot,
                });
                (self.join_message(&room, number), true)
            }
            Command::Leave { room, reply, slot } => {
                if self.rooms.status(&room).is_some() {
                    self.rooms.set_status(&room, Status::Leaving);
                }
                let number = self.pending.add(Request::Leave {
                    room: room.clone(),
                    reply,
                    _slot: slot,
                });
                let r#ref = self.refs.of(number);
                (
                    self.request(Kind::Leave, &room, String::new(), r#ref),
                    false,
                )
            }
            Command::Post {
                room,
                content,
                reply,
                slot,
            } => {
                let message = Request::Chat {
                    room: room.clone(),
                    content: content.clone(),
                    resent: false,
                    reply,
                    _slot: slot,
                };
                let r#ref = self.refs.of(self.pending.add(message));
                (self.request(Kind::Chat, &room, content, r#ref), false)
            }
        };
        if connected {
            self.outbox.push_back(message);
            if is_join {
                self.push_marker();
            }
        }
    }

    /// Sends the CHATs waiting in `retry` again, with their `ref`.
    pub(super) fn send_retries(&mut self) {
        self.retry_at = None;
        for number in std::mem::take(&mut self.retry) {
            if let Some(Request::Chat { room, content, .. }) = self.pending.get(number) {
                let r#ref = self.refs.of(number);
                let message = self.request(Kind::Chat, room, content.clone(), r#ref);
                self.outbox.push_back(message);
            }
        }
    }

    fn push_marker(&mut self) {
        let r#ref = self.refs.of(self.pending.add(Request::Marker));
        let marker = self.request(Kind::Ping, "", String::new(), r#ref);
        self.outbox.push_back(marker);
    }

    fn join_message(&self, room: &str, number: u64) -> Message {
        let (since_seq, epoch) = self.rooms.position(room);
        Message {
            since_seq,
            epoch,
            ..self.request(Kind::Join, room, String::new(), self.refs.of(number))
        }
    }

    fn request(&self, kind: Kind, room: &str, content: String, r#ref: String) -> Message {
        Message {
            r#ref,
            content,
            ..self.message(kind, room, String::new())
        }
    }

    /// Every request carries the user: the first one names the session.
    pub(super) fn message(&self, kind: Kind, room: &str, content: String) -> Message {
        Message {
            kind: kind.into(),
            user: self.user.clone(),
            room: room.to_string(),
            content,
            ..Message::default()
        }
    }
}
