//! Records a library client's events in a task, so a test can wait (bounded) for a condition
//! on everything received so far, and read it all afterwards.

use chatrooms::client::{ChatMessage, ClientError, Event, Events};
use tokio::{sync::watch, task::JoinHandle, time::timeout};

use super::WAIT;

pub struct Recorder {
    events: watch::Receiver<Vec<Event>>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub fn start(mut stream: Events) -> Recorder {
        let (tx, events) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                tx.send_modify(|events| events.push(event));
            }
        });
        Recorder { events, task }
    }

    /// Waits until `find` finds something in the events so far, and returns it.
    pub async fn wait_for<T>(&self, what: &str, find: impl Fn(&[Event]) -> Option<T>) -> T {
        let mut events = self.events.clone();
        let mut found = None;
        let waited = timeout(WAIT, async {
            events
                .wait_for(|events| {
                    found = find(events);
                    found.is_some()
                })
                .await
                .map(|_| ())
        })
        .await;
        match (waited, found) {
            (Ok(_), Some(found)) => found,
            _ => panic!("{what}: not seen in {WAIT:?}; events: {:#?}", self.tail()),
        }
    }

    /// Waits until `n` messages (CHATs) of `room` have been delivered.
    pub async fn wait_messages(&self, room: &str, n: usize) -> Vec<ChatMessage> {
        self.wait_for(&format!("{n} messages in {room}"), |events| {
            let mut count = events.iter().filter(|event| match event {
                Event::Message(m) => m.room == room,
                _ => false,
            });
            (n == 0 || count.nth(n - 1).is_some()).then(|| messages_in(events, room))
        })
        .await
    }

    /// Waits for the message with `content` in `room`.
    pub async fn wait_content(&self, room: &str, content: &str) -> ChatMessage {
        self.wait_for(&format!("{content:?} in {room}"), |events| {
            messages_in(events, room)
                .into_iter()
                .find(|m| m.content == content)
        })
        .await
    }

    /// True when nothing `find` finds turns up for `quiet` (asserting absence, like `QUIET`).
    pub async fn quiet_for(
        &self,
        quiet: std::time::Duration,
        find: impl Fn(&[Event]) -> bool,
    ) -> bool {
        let mut events = self.events.clone();
        timeout(quiet, events.wait_for(|events| find(events)))
            .await
            .is_err()
    }

    /// Waits for the client to stop and returns the error it stopped with.
    pub async fn closed(&self) -> Option<ClientError> {
        self.wait_for("Closed", |events| {
            events.iter().find_map(|event| match event {
                Event::Closed(error) => Some(error.clone()),
                _ => None,
            })
        })
        .await
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.borrow().clone()
    }

    pub fn messages(&self, room: &str) -> Vec<ChatMessage> {
        messages_in(&self.events.borrow(), room)
    }

    /// The `Resumed` events so far, as (room, replayed, truncated).
    pub fn resumed(&self) -> Vec<(String, u64, bool)> {
        self.events
            .borrow()
            .iter()
            .filter_map(|event| match event {
                Event::Resumed {
                    room,
                    replayed,
                    truncated,
                } => Some((room.clone(), *replayed, *truncated)),
                _ => None,
            })
            .collect()
    }

    /// The last 40 events, for failure messages.
    fn tail(&self) -> Vec<Event> {
        let events = self.events.borrow();
        events[events.len().saturating_sub(40)..].to_vec()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn messages_in(events: &[Event], room: &str) -> Vec<ChatMessage> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Message(m) if m.room == room => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// Options for a library client in tests: quick heartbeats and backoff, so faults are noticed
/// and repaired in milliseconds.
pub fn fast(address: &str, user: &str) -> chatrooms::client::ClientOptions {
    use std::time::Duration;
    chatrooms::client::ClientOptions::new(address, user)
        .heartbeat(Duration::from_millis(100), Duration::from_millis(600))
        .backoff(Duration::from_millis(5), Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(2))
}

/// The CHATs a raw test client receives, read continuously by a task (so it never becomes a
/// slow consumer while the test is busy elsewhere).
pub struct Tap {
    chats: watch::Receiver<Vec<chatrooms::proto::Message>>,
    task: JoinHandle<()>,
}

impl Tap {
    pub fn start(client: super::Client) -> Tap {
        use chatrooms::proto::Kind;
        let (tx, chats) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            // The whole client, its request side included (a dropped one half-closes).
            let mut client = client;
            loop {
                match client.rx.message().await {
                    Ok(Some(message)) if message.kind() == Kind::Chat => {
                        tx.send_modify(|chats| chats.push(message));
                    }
                    Ok(Some(_)) => {}
                    ended => panic!("{}: tapped stream ended: {ended:?}", client.user),
                }
            }
        });
        Tap { chats, task }
    }

    pub fn chats(&self) -> Vec<chatrooms::proto::Message> {
        self.chats.borrow().clone()
    }

    pub fn len(&self) -> usize {
        self.chats.borrow().len()
    }

    /// Waits until `n` CHATs have arrived.
    pub async fn wait_len(&self, n: usize) {
        let mut chats = self.chats.clone();
        timeout(WAIT, chats.wait_for(|chats| chats.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} chats not seen in {WAIT:?}, got {}", self.len()))
            .expect("the tapped stream ended (see the panic above)");
    }

    /// Waits for the CHAT with `content`.
    pub async fn wait_content(&self, content: &str) -> chatrooms::proto::Message {
        let mut chats = self.chats.clone();
        let found = timeout(
            WAIT,
            chats.wait_for(|chats| chats.iter().any(|m| m.content == content)),
        )
        .await
        .unwrap_or_else(|_| panic!("{content:?} not seen in {WAIT:?}"))
        .expect("the tapped stream ended (see the panic above)");
        found.iter().find(|m| m.content == content).unwrap().clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
