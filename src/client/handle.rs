//! [`Client`]: the cloneable handle an application holds — join, post, leave, close — and the
//! two things it gets back: a [`Reply`] per request and the [`Events`] stream. The handle only
//! passes commands to the driver task, through a bounded channel.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;

use super::{
    connection::Link,
    driver::Driver,
    error::ClientError,
    event::{Ack, Event, Joined},
    options::ClientOptions,
    pending::{ReplyTx, Slot, Slots},
};

/// Commands queued between the handles and the driver.
const COMMAND_BUFFER: usize = 64;

/// What a handle asks the driver to do.
#[derive(Debug)]
pub(crate) enum Command {
    Join {
        room: String,
        reply: ReplyTx<Joined>,
        slot: Slot,
    },
    Leave {
        room: String,
        reply: ReplyTx<()>,
        slot: Slot,
    },
    Post {
        room: String,
        content: String,
        reply: ReplyTx<Ack>,
        slot: Slot,
    },
    Close,
}

/// A connected chat client; cheap to clone. See the [module docs](super) for an example.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    /// Places for requests awaiting their answers.
    slots: Slots,
}

impl Client {
    /// Opens the first stream (asking the token callback, if any, for a token) and starts the
    /// task that keeps it up. Fails if that first stream cannot be opened; once connected, the
    /// client reconnects by itself.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let mut link = Link::new(&options)?;
        let connection = link
            .open_refreshing()
            .await
            .map_err(|failure| failure.into_error(link.address()))?;
        let (commands, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let (events_tx, events) = mpsc::channel(options.event_capacity);
        let slots = Slots::new(&options);
        let driver = Driver::new(&options, link, commands_rx, events_tx, slots.clone());
        tokio::spawn(driver.run(connection));
        Ok((Client { commands, slots }, Events { rx: events }))
    }

    /// Joins `room` (empty: the server's default room) and waits for JOINED. The replay that
    /// follows arrives as events.
    pub async fn join(&self, room: &str) -> Result<Joined, ClientError> {
        self.send_join(room).await?.await
    }

    /// Posts `content` to `room` and waits for its acknowledgement. Across reconnects it is
    /// sent again with the same `ref` until acknowledged, and the server posts it once.
    pub async fn post(&self, room: &str, content: impl Into<String>) -> Result<Ack, ClientError> {
        self.send_post(room, content).await?.await
    }

    /// Leaves `room` and waits for LEFT.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.send_leave(room).await?.await
    }

    /// Queues a JOIN (waiting while `max_pending` requests are unanswered) and returns the
    /// future of its answer. Dropping that future is fine: an ERROR then becomes an
    /// [`Event::Error`].
    pub async fn send_join(&self, room: &str) -> Result<Reply<Joined>, ClientError> {
        let slot = self.slots.take(0).await?;
        self.command(|reply| Command::Join {
            room: room.to_string(),
            reply,
            slot,
        })
        .await
    }

    /// Queues a CHAT; see [`Client::send_join`] and [`Client::post`]. Content over
    /// `max_content_bytes` is refused here ([`ClientError::TooLarge`]): a frame the server
    /// will not read would end every stream it is resent on.
    pub async fn send_post(
        &self,
        room: &str,
        content: impl Into<String>,
    ) -> Result<Reply<Ack>, ClientError> {
        let content = content.into();
        let slot = self.slots.take(content.len()).await?;
        self.command(|reply| Command::Post {
            room: room.to_string(),
            content,
            reply,
            slot,
        })
        .await
    }

    /// Queues a LEAVE; see [`Client::send_join`].
    pub async fn send_leave(&self, room: &str) -> Result<Reply<()>, ClientError> {
        let slot = self.slots.take(0).await?;
        self.command(|reply| Command::Leave {
            room: room.to_string(),
            reply,
            slot,
        })
        .await
    }

    /// Finishes: requests already queued are still answered (sent again across reconnects),
    /// then the stream is half-closed, what the server still sends is delivered, and the event
    /// stream ends with `Event::Closed(None)`. Returns once the close is queued. Dropping every
    /// handle does the same, except that once the events and every [`Reply`] are dropped too,
    /// a disconnected client stops instead of reconnecting for requests nobody waits for.
    pub async fn close(&self) {
        let _ = self.commands.send(Command::Close).await;
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(ReplyTx<T>) -> Command,
    ) -> Result<Reply<T>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Reply { rx })
    }
}

/// The answer to one request: resolves on the server's reply matched by `ref` (the CHAT's
/// echo, JOINED, LEFT, or an ERROR as [`ClientError::Refused`]).
#[derive(Debug)]
#[must_use = "a Reply does nothing unless awaited; dropping it is fine"]
pub struct Reply<T> {
    rx: oneshot::Receiver<Result<T, ClientError>>,
}

impl<T> Future for Reply<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ClientError::Closed)))
    }
}

/// The client's events, in order; ends after [`Event::Closed`]. Bounded: read it, or the
/// client stops reading the server.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, `None` once the client has stopped and everything was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
