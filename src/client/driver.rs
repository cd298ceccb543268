//! [`Driver`]: the task behind a [`Client`](super::Client). It owns the stream: writes the
//! requests (made in `outbox`), reads the replies (handled in `inbox`), sends heartbeats and
//! notices a connection that went silent, and on a break reconnects with backoff; each new
//! stream starts by rejoining every room and sending every unanswered request again.

use std::time::Duration;

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
    pending::{Pending, Refs, Slots},
    rooms::Rooms,
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
    pub(super) closing: bool,
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
                permit = async {
                    match sending {
                        Some(tx) => tx.reserve().await,
                        None => std::future::pending().await,
                    }
                }, if sending.is_some() => {
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
                if self.closing && (self.pending.users() == 0 || self.unheard()) {
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

    /// Nobody can learn anything from this client any more: every handle, the event stream
    /// and every reply are gone. Then it does not reconnect for the requests still pending.
    fn unheard(&self) -> bool {
        self.events.is_closed() && !self.pending.awaited()
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
