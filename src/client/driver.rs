//! [`Driver`]: the task behind a [`Client`](super::Client). It owns the stream: writes the
//! requests, reads the replies (their handling is in `inbox`), sends heartbeats and notices a
//! connection that went silent, and on a break reconnects with backoff, then rejoins every
//! room from where it was and sends every unanswered request again with its `ref`.

use std::{collections::HashSet, time::Duration};

use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior, interval_at, sleep, sleep_until},
};

use super::{
    backoff::Backoff,
    connection::{Connection, Failure, Link},
    error::ClientError,
    event::Event,
    handle::Command,
    options::ClientOptions,
    pending::{Pending, Refs, Request, Slots},
    rooms::{Rooms, Status},
};
use crate::proto::{Kind, Message};

/// How a stream ended, as far as the client is concerned.
pub(crate) enum Ending {
    /// Half-closed by the client and finished by the server.
    Closed,
    Broken(Failure),
}

pub(crate) struct Driver {
    pub(super) user: String,
    heartbeat: Duration,
    heartbeat_timeout: Duration,
    link: Link,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    slots: Slots,
    pub(super) rooms: Rooms,
    pub(super) pending: Pending,
    pub(super) refs: Refs,
    pub(super) backoff: Backoff,
    /// Requests for the current stream, oldest first; empty while disconnected (a new stream
    /// starts from `pending`).
    pub(super) outbox: std::collections::VecDeque<Message>,
    /// Resent CHATs refused by the rate limit, to send again at `retry_at`.
    pub(super) retry: Vec<u64>,
    pub(super) retry_at: Option<Instant>,
    /// `close` was asked for, or every handle is gone.
    closing: bool,
}

impl Driver {
    pub(crate) fn new(
        options: &ClientOptions,
        link: Link,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        slots: Slots,
    ) -> Driver {
        Driver {
            user: options.user.clone(),
            heartbeat: options.heartbeat,
            heartbeat_timeout: options.heartbeat_timeout,
            link,
            commands,
            events,
            slots,
            rooms: Rooms::default(),
            pending: Pending::default(),
            refs: Refs::new(),
            backoff: Backoff::new(options.backoff_initial, options.backoff_max),
            outbox: Default::default(),
            retry: Vec::new(),
            retry_at: None,
            closing: false,
        }
    }

    pub(crate) async fn run(mut self, mut connection: Connection) {
        let end = loop {
            self.emit(Event::Connected).await;
            let ending = self.serve(&mut connection).await;
            drop(connection);
            self.outbox.clear();
            self.retry.clear();
            self.retry_at = None;
            self.rooms.abandon_replays();
            let (reason, now) = match ending {
                Ending::Closed => break None,
                Ending::Broken(Failure::Fatal(error)) => break Some(error),
                Ending::Broken(Failure::Retry(reason)) => (reason, false),
                // A refused token (e.g. expired): a fresh one, then straight back.
                Ending::Broken(Failure::Unauthenticated(reason)) => {
                    if let Err(error) = self.link.refresh(&reason).await {
                        break Some(error);
                    }
                    (format!("UNAUTHENTICATED: {reason}"), true)
                }
            };
            match self.reconnect(reason, now).await {
                Ok(Some(next)) => connection = next,
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        self.finish(end).await;
    }

    /// Serves one stream until it ends.
    async fn serve(&mut self, connection: &mut Connection) -> Ending {
        self.resume().await;
        let mut heartbeat = interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Since when a PING (or the half-close) waits for anything at all to come back.
        let mut silent_since: Option<Instant> = Some(Instant::now());
        loop {
            if connection.tx.is_some()
                && self.closing
                && self.outbox.is_empty()
                && self.pending.users() == 0
            {
                connection.tx = None; // half-close: the server finishes the stream
                silent_since = Some(Instant::now());
            }
            let deadline = silent_since.map(|since| since + self.heartbeat_timeout);
            // select! builds every branch's future, disabled ones too.
            let silent_at = deadline.unwrap_or_else(|| Instant::now() + self.heartbeat);
            let retry_at = self.retry_at.unwrap_or(silent_at);
            let sending = connection.tx.as_ref().filter(|_| !self.outbox.is_empty());
            tokio::select! {
                // Writing first and the deadline last: buffered replies are read before a
                // connection counts as silent, and a flood of replies cannot starve requests.
                biased;
                permit = async { sending.unwrap().reserve().await }, if sending.is_some() => {
                    match permit {
                        // unwrap: the branch runs only with a request waiting.
                        Ok(permit) => permit.send(self.outbox.pop_front().unwrap()),
                        Err(_) => return broken("the connection closed"),
                    }
                }
                command = self.commands.recv(), if !self.closing => match command {
                    Some(command) => self.command(command, true),
                    None => self.closing = true,
                },
                reply = connection.rx.message() => match reply {
                    Ok(Some(message)) => {
                        silent_since = None;
                        if let Some(failure) = self.on_message(message).await {
                            return Ending::Broken(failure);
                        }
                    }
                    Ok(None) if connection.tx.is_none() => return Ending::Closed,
                    Ok(None) => return broken("the server ended the stream"),
                    Err(status) => return Ending::Broken(Failure::from_status(&status)),
                },
                _ = heartbeat.tick(), if connection.tx.is_some() => {
                    if !self.outbox.iter().any(|m| m.kind() == Kind::Ping) {
                        self.outbox.push_back(self.message(Kind::Ping, "", String::new()));
                    }
                    silent_since.get_or_insert_with(Instant::now);
                }
                _ = sleep_until(retry_at), if self.retry_at.is_some() => self.send_retries(),
                _ = sleep_until(silent_at), if deadline.is_some() => {
                    if connection.tx.is_none() {
                        return Ending::Closed; // half-closed and the server never finished
                    }
                    return broken(&format!(
                        "no reply from the server within {:?}",
                        self.heartbeat_timeout
                    ));
                }
            }
        }
    }

    /// Waits out the backoff and opens a new stream, taking commands meanwhile. `Ok(None)`:
    /// the client was closed with nothing left to send.
    async fn reconnect(
        &mut self,
        mut reason: String,
        mut now: bool,
    ) -> Result<Option<Connection>, ClientError> {
        loop {
            let (attempt, delay) = self.backoff.next();
            let delay = if now { Duration::ZERO } else { delay };
            now = false;
            self.emit(Event::Reconnecting {
                attempt,
                delay,
                reason: reason.clone(),
            })
            .await;
            let wait = sleep(delay);
            tokio::pin!(wait);
            loop {
                if self.closing && self.pending.users() == 0 {
                    return Ok(None);
                }
                tokio::select! {
                    _ = &mut wait => break,
                    command = self.commands.recv(), if !self.closing => match command {
                        Some(command) => self.command(command, false),
                        None => self.closing = true,
                    },
                }
            }
            match self.link.open_refreshing().await {
                Ok(connection) => return Ok(Some(connection)),
                Err(Failure::Retry(why)) => reason = why,
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Unauthenticated(why)) => {
                    return Err(ClientError::Unauthenticated(why));
                }
            }
        }
    }

    /// Starts a new stream: rejoins the rooms from where they were, sends every unanswered
    /// request again (same `ref`), then a marker PING whose PONG ends the rejoins' replays.
    async fn resume(&mut self) {
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
    fn command(&mut self, command: Command, connected: bool) {
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
    fn send_retries(&mut self) {
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
    fn message(&self, kind: Kind, room: &str, content: String) -> Message {
        Message {
            kind: kind.into(),
            user: self.user.clone(),
            room: room.to_string(),
            content,
            ..Message::default()
        }
    }

    /// Hands `event` to the application; waits while its queue is full.
    pub(super) async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Stops: every waiting request and command gets the error, then the last event.
    async fn finish(mut self, end: Option<ClientError>) {
        let error = end.clone().unwrap_or(ClientError::Closed);
        self.slots.close();
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Join { reply, .. } => drop(reply.send(Err(error.clone()))),
                Command::Leave { reply, .. } => drop(reply.send(Err(error.clone()))),
                Command::Post { reply, .. } => drop(reply.send(Err(error.clone()))),
                Command::Close => {}
            }
        }
        self.pending.fail_all(&error);
        self.emit(Event::Closed(end)).await;
    }
}

fn broken(reason: &str) -> Ending {
    Ending::Broken(Failure::Retry(reason.to_string()))
}
