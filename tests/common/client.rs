//! Test clients: one `ChatStream` call as a [`Client`] (requests in, replies out, each wait
//! bounded), small-window connections for clients that stop reading, and a raw stream for
//! frames the typed client cannot send.

use std::time::Duration;

use bytes::Bytes;
use chatrooms::{
    edge::codec::ChatCodec,
    proto::{Kind, Message, chat_service_client::ChatServiceClient},
};
use tokio::{sync::mpsc, time::timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status, Streaming,
    transport::{Channel, Endpoint},
};

use super::{QUIET, WAIT};

/// An HTTP/2 endpoint with small flow-control windows, for a client that is going to stop
/// reading: the transport then buffers little on its behalf, so the server's queue fills soon.
pub fn small_window(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
}

/// A client on its own small-window connection (see [`small_window`]).
pub async fn small_window_client(endpoint: Endpoint, user: &str) -> Client {
    Client::open(small_window(endpoint).connect().await.unwrap(), user).await
}

/// One `ChatStream` call: requests go in through `tx`, replies come out of `rx`.
pub struct Client {
    pub user: String,
    tx: Option<mpsc::Sender<Message>>,
    pub rx: Streaming<Message>,
    next_ref: u64,
}

impl Client {
    pub async fn open(channel: Channel, user: &str) -> Client {
        Client::try_open(channel, user).await.expect("stream opens")
    }

    pub async fn try_open(channel: Channel, user: &str) -> Result<Client, Status> {
        Client::try_open_with_token(channel, user, None).await
    }

    /// Opens a stream carrying `authorization: Bearer <token>` when a token is given.
    pub async fn try_open_with_token(
        channel: Channel,
        user: &str,
        token: Option<&str>,
    ) -> Result<Client, Status> {
        let authorization = token.map(|token| format!("Bearer {token}"));
        Client::try_open_with_authorization(channel, user, authorization.as_deref()).await
    }

    /// Opens a stream carrying exactly this `authorization` header, when one is given.
    pub async fn try_open_with_authorization(
        channel: Channel,
        user: &str,
        authorization: Option<&str>,
    ) -> Result<Client, Status> {
        let (tx, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(authorization) = authorization {
            let value = authorization.parse().expect("ascii header");
            request.metadata_mut().insert("authorization", value);
        }
        let rx = ChatServiceClient::new(channel)
            .chat_stream(request)
            .await?
            .into_inner();
        Ok(Client {
            user: user.to_string(),
            tx: Some(tx),
            rx,
            next_ref: 0,
        })
    }

    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("{}-{}", self.user, self.next_ref)
    }

    /// Sends `message` with this client's `user` filled in if empty.
    pub async fn send(&self, mut message: Message) {
        if message.user.is_empty() {
            message.user = self.user.clone();
        }
        self.tx
            .as_ref()
            .expect("not half-closed")
            .send(message)
            .await
            .expect("request stream open");
    }

    /// Drops the stream abruptly: the response side first (a RST_STREAM, as when a client dies),
    /// not the orderly half-close that dropping the request side first would send.
    pub fn abort(self) {
        let Client { rx, tx, .. } = self;
        drop(rx);
        drop(tx);
    }

    /// Half-closes the request stream (CloseSend).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    pub async fn send_kind(&mut self, kind: Kind, room: &str) -> String {
        let r#ref = self.fresh_ref();
        self.send(Message {
            kind: kind.into(),
            room: room.into(),
            r#ref: r#ref.clone(),
            ..Message::default()
        })
        .await;
        r#ref
    }

    /// JOINs `room` and returns its JOINED.
    pub async fn join(&mut self, room: &str) -> Message {
        self.join_since(room, 0).await
    }

    pub async fn join_since(&mut self, room: &str, since_seq: u64) -> Message {
        self.join_resuming(room, since_seq, "").await
    }

    /// JOINs `room` resuming after `since_seq` of `epoch`; returns its JOINED.
    pub async fn join_resuming(&mut self, room: &str, since_seq: u64, epoch: &str) -> Message {
        let r#ref = self.fresh_ref();
        self.send(Message {
            kind: Kind::Join.into(),
            room: room.into(),
            since_seq,
            epoch: epoch.into(),
            r#ref: r#ref.clone(),
            ..Message::default()
        })
        .await;
        let joined = self.expect(Kind::Joined).await;
        assert_eq!(joined.r#ref, r#ref);
        joined
    }

    /// Posts `content` to `room` and returns the ref used.
    pub async fn chat(&mut self, room: &str, content: &str) -> String {
        let r#ref = self.fresh_ref();
        self.chat_with_ref(room, content, &r#ref).await;
        r#ref
    }

    /// Posts `content` to `room` with exactly this `ref` (a resend uses the original's).
    pub async fn chat_with_ref(&mut self, room: &str, content: &str, r#ref: &str) {
        self.send(Message {
            kind: Kind::Chat.into(),
            room: room.into(),
            content: content.into(),
            r#ref: r#ref.into(),
            ..Message::default()
        })
        .await;
    }

    /// The next reply; panics on a status, end of stream or [`WAIT`].
    pub async fn next(&mut self) -> Message {
        self.next_within(WAIT).await
    }

    /// The next reply, or the status the stream failed with; panics on a clean end or [`WAIT`].
    pub async fn next_or_status(&mut self) -> Result<Message, Status> {
        match timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(message))) => Ok(message),
            Ok(Ok(None)) => panic!("{}: stream ended", self.user),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("{}: nothing received in {WAIT:?}", self.user),
        }
    }

    pub async fn next_within(&mut self, wait: Duration) -> Message {
        match timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => panic!("{}: stream ended", self.user),
            Ok(Err(status)) => panic!("{}: stream failed: {status:?}", self.user),
            Err(_) => panic!("{}: nothing received in {wait:?}", self.user),
        }
    }

    /// The next reply, which must be of `kind`.
    pub async fn expect(&mut self, kind: Kind) -> Message {
        let message = self.next().await;
        assert_eq!(
            message.kind(),
            kind,
            "{}: unexpected {message:?}",
            self.user
        );
        message
    }

    /// The next reply, which must be an ERROR with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Message {
        let message = self.expect(Kind::Error).await;
        assert_eq!(message.code, code, "{}: {message:?}", self.user);
        assert!(!message.content.is_empty(), "an error says why");
        message
    }

    /// Skips messages until one satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&Message) -> bool) -> Message {
        loop {
            let message = self.next().await;
            if pred(&message) {
                return message;
            }
        }
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        self.expect_silence_for(QUIET).await;
    }

    pub async fn expect_silence_for(&mut self, quiet: Duration) {
        if let Ok(next) = timeout(quiet, self.rx.message()).await {
            panic!("{}: expected silence, got {next:?}", self.user);
        }
    }

    /// Reads until the stream ends; returns what was received and the final status (`None` = OK).
    pub async fn drain_to_end(&mut self) -> (Vec<Message>, Option<Status>) {
        let mut received = Vec::new();
        loop {
            match timeout(WAIT, self.rx.message()).await {
                Ok(Ok(Some(message))) => received.push(message),
                Ok(Ok(None)) => return (received, None),
                Ok(Err(status)) => return (received, Some(status)),
                Err(_) => panic!("{}: stream did not end in {WAIT:?}", self.user),
            }
        }
    }

    /// Reads until the stream fails and returns the status code.
    pub async fn expect_end(&mut self, code: Code) -> Status {
        let (_, status) = self.drain_to_end().await;
        let status = status.unwrap_or_else(|| panic!("{}: ended OK, expected {code:?}", self.user));
        assert_eq!(status.code(), code, "{status:?}");
        status
    }
}

/// A stream whose requests are raw bytes, for frames no well-behaved client would send.
pub async fn raw_stream(channel: Channel) -> (mpsc::Sender<Bytes>, Streaming<Message>) {
    let (tx, rx) = mpsc::channel(16);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = "/chat.v1.ChatService/ChatStream".parse().unwrap();
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            path,
            ChatCodec::default(),
        )
        .await
        .expect("stream opens");
    (tx, response.into_inner())
}
