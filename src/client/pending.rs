//! [`Pending`]: the requests sent and not answered yet, by request number, which is also
//! their `ref` ([`Refs`]). A reconnect sends the user's requests again in their original order
//! and with their original `ref`, so the server can tell a resent CHAT from a new one.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::{
    error::ClientError,
    event::{Ack, Joined},
    options::ClientOptions,
};

/// The bounds on requests awaiting answers: how many (`max_pending`) and how many bytes of
/// CHAT content (`max_pending_bytes`). The handles wait here for a place; the driver closes
/// them when it stops, which wakes every waiter with [`ClientError::Closed`].
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_content: usize,
}

/// A request's place within the bounds, given back when it is answered.
#[derive(Debug)]
pub(crate) struct Slot {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Slots {
    pub(crate) fn new(options: &ClientOptions) -> Slots {
        let budget = options.max_pending_bytes.min(u32::MAX as usize);
        Slots {
            count: Arc::new(Semaphore::new(options.max_pending)),
            bytes: Arc::new(Semaphore::new(budget)),
            max_content: options.max_content_bytes.min(budget),
        }
    }

    /// A place for a request carrying `content` bytes; waits while the bounds are full.
    pub(crate) async fn take(&self, content: usize) -> Result<Slot, ClientError> {
        if content > self.max_content {
            return Err(ClientError::TooLarge {
                len: content,
                max: self.max_content,
            });
        }
        // `max_content` is within u32, so this conversion cannot fail in practice.
        let wanted = u32::try_from(content).map_err(|_| ClientError::TooLarge {
            len: content,
            max: self.max_content,
        })?;
        let closed = |_| ClientError::Closed;
        let count = self.count.clone().acquire_owned().await.map_err(closed)?;
        let bytes = match wanted {
            0 => None,
            n => Some(
                self.bytes
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(closed)?,
            ),
        };
        Ok(Slot {
            _count: count,
            _bytes: bytes,
        })
    }

    pub(crate) fn close(&self) {
        self.count.close();
        self.bytes.close();
    }
}

/// Where the answer to one request goes.
pub(crate) type ReplyTx<T> = oneshot::Sender<Result<T, ClientError>>;

/// A request waiting for its answer.
#[derive(Debug)]
pub(crate) enum Request {
    Join {
        room: String,
        reply: ReplyTx<Joined>,
        /// Held until answered: the request's place within the bounds.
        _slot: Slot,
    },
    Leave {
        room: String,
        reply: ReplyTx<()>,
        /// Held until answered: the request's place within the bounds.
        _slot: Slot,
    },
    Chat {
        room: String,
        content: String,
        /// Sent again on a later stream: a refusal by the rate limit then leaves its outcome
        /// unknown (the first send may have been posted), so it is tried again, not failed.
        resent: bool,
        reply: ReplyTx<Ack>,
        /// Held until answered: the request's place within the bounds.
        _slot: Slot,
    },
    /// The client's own rejoin of a room after a reconnect.
    Resume { room: String },
    /// A PING whose PONG ends the replays of the JOINs sent before it.
    Marker,
}

impl Request {
    /// A request of the user's (as opposed to the client's own bookkeeping).
    pub(crate) fn is_users(&self) -> bool {
        matches!(
            self,
            Request::Join { .. } | Request::Leave { .. } | Request::Chat { .. }
        )
    }

    /// Whether someone still waits for the answer (holds its `Reply`).
    fn awaited(&self) -> bool {
        match self {
            Request::Join { reply, .. } => !reply.is_closed(),
            Request::Leave { reply, .. } => !reply.is_closed(),
            Request::Chat { reply, .. } => !reply.is_closed(),
            Request::Resume { .. } | Request::Marker => false,
        }
    }

    /// Ends the request with `error`, wherever it waits.
    pub(crate) fn fail(self, error: ClientError) {
        match self {
            Request::Join { reply, .. } => drop(reply.send(Err(error))),
            Request::Leave { reply, .. } => drop(reply.send(Err(error))),
            Request::Chat { reply, .. } => drop(reply.send(Err(error))),
            Request::Resume { .. } | Request::Marker => {}
        }
    }
}

/// `ref`s of one client: a random prefix (so that no two clients of one user, whose CHATs the
/// server deduplicates by user, room and ref, ever share one) and the request number.
#[derive(Debug, Clone)]
pub(crate) struct Refs {
    prefix: String,
}

impl Refs {
    pub(crate) fn new() -> Refs {
        Refs {
            prefix: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    pub(crate) fn of(&self, number: u64) -> String {
        format!("{}.{number}", self.prefix)
    }

    /// The request number in `r#ref`, if it is one of this client's.
    pub(crate) fn number(&self, r#ref: &str) -> Option<u64> {
        r#ref
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }
}

/// Requests waiting for their answers, in the order they were made.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: u64,
    requests: BTreeMap<u64, Request>,
}

impl Pending {
    /// Records `request` under a new number, returned.
    pub(crate) fn add(&mut self, request: Request) -> u64 {
        self.next += 1;
        self.requests.insert(self.next, request);
        self.next
    }

    /// Records `request` again under the number it had.
    pub(crate) fn restore(&mut self, number: u64, request: Request) {
        self.requests.insert(number, request);
    }

    pub(crate) fn get(&self, number: u64) -> Option<&Request> {
        self.requests.get(&number)
    }

    pub(crate) fn take(&mut self, number: u64) -> Option<Request> {
        self.requests.remove(&number)
    }

    /// The user's requests still waiting (a close waits for them).
    pub(crate) fn users(&self) -> usize {
        self.requests.values().filter(|r| r.is_users()).count()
    }

    /// Whether anyone still waits for the answer to one of the user's requests.
    pub(crate) fn awaited(&self) -> bool {
        self.requests.values().any(Request::awaited)
    }

    /// Everything waiting, oldest first, emptied.
    pub(crate) fn drain(&mut self) -> Vec<(u64, Request)> {
        std::mem::take(&mut self.requests).into_iter().collect()
    }

    /// Ends every request with `error`.
    pub(crate) fn fail_all(&mut self, error: &ClientError) {
        for (_, request) in self.drain() {
            request.fail(error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_other_clients_refs_are_not_ours() {
        let ours = Refs::new();
        let theirs = Refs::new();
        assert_eq!(ours.number(&ours.of(42)), Some(42));
        assert_eq!(ours.number(&theirs.of(42)), None);
        assert_eq!(ours.number("42"), None);
        assert!(ours.of(u64::MAX).len() <= 128, "the server's ref limit");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_bound_the_count_and_the_bytes_and_refuse_oversized_content() {
        use std::time::Duration;
        let options = ClientOptions::new("h:1", "u")
            .max_pending(2)
            .max_pending_bytes(10)
            .max_content_bytes(8);
        let slots = Slots::new(&options);
        let waits = |slots: Slots, bytes| async move {
            tokio::time::timeout(Duration::from_secs(1), slots.take(bytes))
                .await
                .is_err()
        };
        let six = slots.take(6).await.unwrap();
        assert!(waits(slots.clone(), 6).await, "16 bytes would be over 10");
        let join = slots.take(0).await.unwrap();
        assert!(
            waits(slots.clone(), 0).await,
            "a third request would be over 2"
        );
        drop(six);
        let eight = slots.take(8).await.unwrap();
        assert_eq!(
            slots.take(9).await.unwrap_err(),
            ClientError::TooLarge { len: 9, max: 8 }
        );
        drop((eight, join));
        slots.close();
        assert_eq!(slots.take(1).await.unwrap_err(), ClientError::Closed);
    }

    #[test]
    fn drain_gives_the_requests_back_in_order_and_restore_keeps_numbers() {
        let mut pending = Pending::default();
        let first = pending.add(Request::Marker);
        let second = pending.add(Request::Resume { room: "r".into() });
        assert_eq!(pending.users(), 0);
        let drained = pending.drain();
        assert_eq!(
            drained.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [first, second]
        );
        for (number, request) in drained {
            pending.restore(number, request);
        }
        assert!(matches!(pending.take(second), Some(Request::Resume { .. })));
        assert!(
            pending.add(Request::Marker) > second,
            "numbers are never reused"
        );
    }
}
