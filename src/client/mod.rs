//! A chat client that survives: one `ChatStream` kept up across broken connections, server
//! restarts and token expiry, with requests answered by futures and everything else as events.
//!
//! - [`Client::connect`] takes [`ClientOptions`]: the address (`host:port`, `http://…` or
//!   `https://…`), the user, optionally a bearer-token callback and TLS settings.
//! - [`Client::join`], [`Client::post`] and [`Client::leave`] resolve on the server's reply to
//!   that request, matched by `ref`: JOINED, the CHAT's own echo ([`Ack`]), LEFT, or an ERROR
//!   ([`ClientError::Refused`]). The `send_*` forms return the [`Reply`] future without waiting
//!   for it.
//! - [`Events`] yields room messages, presence, errors nobody waits for, and the connection's
//!   own state: [`Event::Connected`], [`Event::Reconnecting`], [`Event::Resumed`].
//!
//! **Reconnects.** A PING goes out every heartbeat interval; if nothing at all comes back
//! within the heartbeat timeout the connection counts as broken. On a broken or silent
//! connection, a transport error or any status other than those below, the client opens a new
//! connection after an exponential backoff with full jitter (100 ms doubling to 10 s by
//! default). PERMISSION_DENIED, INVALID_ARGUMENT and UNIMPLEMENTED end it with
//! [`ClientError::Ended`]. UNAUTHENTICATED (e.g. "token expired") makes it ask the token
//! callback once for a fresh token and resume at once; if that token is refused too, it ends
//! with [`ClientError::Unauthenticated`].
//!
//! **Resume.** On every new stream the client joins each of its rooms again with `since_seq`
//! and `epoch` of the last message it delivered (in a room where none came yet, `since_seq` 0
//! and the epoch of its JOINED: everything posted since), then sends every unanswered request again in
//! order with its original `ref`: the server acknowledges a CHAT it already accepted (within
//! its `dedup_window_ms`) with the original ack instead of posting it twice. Messages are
//! delivered once each, deduplicated by room, epoch and seq. Once a room's replay is over,
//! [`Event::Resumed`] says how many messages were replayed and whether some are gone for good.
//!
//! **Bounds.** At most `max_pending` requests with `max_pending_bytes` of content wait for
//! answers (further `send_*` calls wait; content over `max_content_bytes` is refused), and
//! `event_capacity` events wait for the reader (then the client stops reading the server).
//!
//! ```no_run
//! use chatrooms::client::{Client, ClientOptions, Event};
//!
//! # async fn run() -> Result<(), chatrooms::client::ClientError> {
//! let options = ClientOptions::new("127.0.0.1:50051", "alice")
//!     .token(|| async { Ok::<_, std::io::Error>("a JWT from your issuer".to_string()) });
//! let (client, mut events) = Client::connect(options).await?;
//! client.join("general").await?;
//! let ack = client.post("general", "hello").await?;
//! println!("posted as #{}", ack.seq);
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("[{}] {}: {}", m.room, m.user, m.content),
//!         Event::Reconnecting { delay, .. } => println!("reconnecting in {delay:?}"),
//!         Event::Resumed { replayed, truncated, .. } => {
//!             println!("back, {replayed} missed messages replayed (some lost: {truncated})")
//!         }
//!         Event::Closed(error) => return error.map_or(Ok(()), Err),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod address;
mod backoff;
mod connection;
mod driver;
mod error;
mod event;
mod handle;
mod inbox;
mod options;
mod outbox;
mod pending;
mod rooms;

pub use error::{ClientError, code_name};
pub use event::{Ack, ChatMessage, Event, Joined, ServerError};
pub use handle::{Client, Events, Reply};
pub use options::{ClientOptions, TokenFuture, TokenSource};
