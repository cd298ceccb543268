//! The client side of a run: dialling the HTTP/2 connections, opening every session's stream with
//! its JOIN, one reader task per stream that classifies and counts replies, the heartbeat that
//! keeps listeners alive, and naming how a stream ended (server status or transport failure).

use std::{
    error::Error as _,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context as _, bail};
use chatrooms::proto::{Message, chat_service_client::ChatServiceClient};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::{self, Instant},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Status, Streaming,
    transport::{Channel, Endpoint},
};

use crate::{
    shared::{FAILED, LATE, Session, Shared, lock},
    stats::round,
    wire::{join_request, ping_request},
};

/// Bound on one TCP connect plus HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections dialled at once, and streams opened at once: bounds the start-up burst.
const DIALING_AT_ONCE: usize = 64;
const OPENING_AT_ONCE: usize = 256;
/// Client connection window. h2 answers a connection that buffers too many small unread DATA frames
/// with GOAWAY ENHANCE_YOUR_CALM `too_many_data_frames`; its budget is half this window, so 16 MiB
/// lets a reader that falls behind for a moment catch up (~50,000 small frames) instead of losing
/// the connection. Such failures are still counted under `transport_failures`.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Requests queued per session before its sender waits (HTTP/2 flow control is behind it).
pub const REQUEST_QUEUE: usize = 64;
/// Sessions that only listen send a PING this often, well under the server's idle timeout (90 s by
/// default), so long `--find-max`, idle and soak runs are not cut by it.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Loopback connections are spread over this many source addresses (127.0.0.2 and up), so the
/// server's per-address limits (`max_connections_per_ip`, `max_streams_per_ip`) see the
/// generator as the many clients it stands for rather than as one address.
const SOURCE_ADDRESSES: usize = 64;

/// The source address for connection `index` to `uri`: one of [`SOURCE_ADDRESSES`] when the
/// server is on IPv4 loopback, else the system's choice.
pub fn source_for(uri: &str, index: usize) -> Option<IpAddr> {
    let host_port = uri.strip_prefix("http://").unwrap_or(uri);
    let host: Ipv4Addr = host_port.rsplit_once(':')?.0.parse().ok()?;
    // Every 127/8 address is local on Linux: no setup is needed to bind them.
    host.is_loopback().then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (index % SOURCE_ADDRESSES) as u8,
        ))
    })
}

pub async fn connect(uri: &str) -> anyhow::Result<Channel> {
    connect_from(uri, None).await
}

/// Dials `uri` from `source` (any address when `None`).
pub async fn connect_from(uri: &str, source: Option<IpAddr>) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .local_address(source)
        .initial_connection_window_size(CONNECTION_WINDOW);
    time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .with_context(|| format!("connecting to {uri} timed out"))?
        .with_context(|| format!("cannot connect to {uri}"))
}

/// Dials every connection (a few at a time); the first failure ends the run with its reason.
pub async fn connect_all(shared: &Shared) -> anyhow::Result<Vec<Channel>> {
    let p = &shared.params;
    shared.progress.stage("connect", p.conns as u64);
    let dialing = Arc::new(Semaphore::new(DIALING_AT_ONCE));
    let mut dials = JoinSet::new();
    for conn in 0..p.conns {
        let uri = p.server_for_conn(conn).to_owned();
        let dialing = dialing.clone();
        dials.spawn(async move {
            let _turn = dialing.acquire().await;
            (conn, connect_from(&uri, source_for(&uri, conn)).await)
        });
    }
    let mut channels = vec![None; p.conns];
    let mut done = 0;
    while let Some(dialed) = dials.join_next().await {
        let (conn, channel) = dialed.context("a connect task failed")?;
        channels[conn] = Some(channel?);
        done += 1;
        shared
            .progress
            .update(done, format!("{done}/{} connections", p.conns));
    }
    Ok(channels.into_iter().flatten().collect())
}

/// The request side of every session. Dropping it half-closes the streams, so it first marks the
/// run as stopping: the stream ends that follow are the generator's doing, not the server's.
pub struct Requests {
    shared: Arc<Shared>,
    pub senders: Vec<mpsc::Sender<Message>>,
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Relaxed);
    }
}

/// Opens every session's stream with its JOIN, waits (bounded) until all have settled, then
/// freezes membership: sessions still pending are not counted as room members.
pub async fn open_sessions(shared: &Arc<Shared>, channels: &[Channel]) -> anyhow::Result<Requests> {
    let p = &shared.params;
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut senders = Vec::with_capacity(p.sessions);
    for (index, session) in shared.sessions.iter().enumerate() {
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        // unwrap: a new channel has room for its first message
        requests
            .try_send(join_request(index, &p.room_name(session.room)))
            .unwrap();
        senders.push(requests);
        let client = ChatServiceClient::new(channels[p.conn_of(index)].clone());
        tokio::spawn(run_session(
            shared.clone(),
            index,
            client,
            requests_rx,
            opening.clone(),
        ));
    }
    let requests = Requests {
        shared: shared.clone(),
        senders,
    };

    shared.progress.stage("join", p.sessions as u64);
    let deadline = started + p.join_timeout;
    let mut poll = time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let joined = shared.joined.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        shared.progress.update(
            joined,
            format!("{joined}/{} joined, {failed} failed", p.sessions),
        );
        if joined + failed >= p.sessions as u64 || Instant::now() >= deadline {
            break;
        }
        shared.check_alive(p.sessions as u64)?;
    }
    let mut late = 0;
    for session in &shared.sessions {
        if session.settle_join(LATE) {
            late += 1;
        }
    }
    let joined = shared.joined.load(Relaxed);
    lock(&shared.outcome).join_s = Some(round(started.elapsed().as_secs_f64(), 3));
    if joined < p.sessions as u64 {
        let failed = shared.failed.load(Relaxed);
        shared.note(format!(
            "only {joined}/{} sessions joined: {failed} refused or failed, {late} still pending \
             after the {} s join timeout (not counted)",
            p.sessions,
            p.join_timeout.as_secs_f64()
        ));
    }
    if joined == 0 {
        bail!("no session joined");
    }
    Ok(requests)
}

/// One session: open its stream (a bounded number at a time), then read every reply until the
/// stream ends, and say how it ended.
async fn run_session(
    shared: Arc<Shared>,
    index: usize,
    mut client: ChatServiceClient<Channel>,
    requests_rx: mpsc::Receiver<Message>,
    opening: Arc<Semaphore>,
) {
    let turn = opening.acquire().await;
    let opened = client.chat_stream(ReceiverStream::new(requests_rx)).await;
    drop(turn);
    let session = &shared.sessions[index];
    let end = match opened {
        Ok(response) => {
            let room = shared.params.room_name(session.room);
            read_replies(&shared, session, &room, response.into_inner()).await
        }
        Err(status) => Some(status),
    };
    session.ended.store(true, Relaxed);
    if session.settle_join(FAILED) {
        shared.failed.fetch_add(1, Relaxed);
    }
    if !shared.stopping.load(Relaxed) {
        shared.record_end(end.as_ref());
    }
    shared.ended.fetch_add(1, Relaxed);
}

/// The read loop: nothing but decode, classify and count, so the connection's buffered frames
/// drain as fast as they arrive. Returns the error status, or `None` for a clean end.
async fn read_replies(
    shared: &Shared,
    session: &Session,
    room: &str,
    mut replies: Streaming<Message>,
) -> Option<Status> {
    loop {
        match replies.message().await {
            Ok(Some(reply)) => session.on_reply(shared, room, &reply),
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

/// PINGs every session now and then, so listeners are not ended by the server's idle timeout.
pub fn spawn_heartbeat(requests: Vec<mpsc::Sender<Message>>) {
    tokio::spawn(async move {
        let mut beat = time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
        loop {
            beat.tick().await;
            for session in &requests {
                // A full queue means the session is busy posting, which keeps it alive anyway.
                let _ = session.try_send(ping_request());
            }
        }
    });
}

pub fn error_code(reply: &Message) -> String {
    if reply.code.is_empty() {
        "(no code)".to_owned()
    } else {
        reply.code.clone()
    }
}

/// A status the client's transport made up (connection lost, h2 GOAWAY, reset) rather than one
/// the server sent in its trailers: tonic attaches the underlying error as the source.
pub fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
        || status.message().starts_with("h2 protocol error")
        || status.message().starts_with("transport error")
}

/// The status and its whole error chain, so a GOAWAY (`connection error …`, e.g. ENHANCE_YOUR_CALM
/// `too_many_data_frames`) shows as such in the report.
pub fn describe_failure(status: &Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !text.contains(&cause) {
            write!(text, ": {cause}").ok();
        }
        source = error.source();
    }
    if text.contains("connection error") && !text.contains("GOAWAY") {
        text.insert_str(0, "GOAWAY ");
    }
    truncate(text, 200)
}

pub use chatrooms::client::code_name;

pub fn truncate(mut text: String, chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(chars) {
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_connections_are_spread_over_source_addresses() {
        let uri = "http://127.0.0.1:50051";
        assert_eq!(source_for(uri, 0), Some([127, 0, 0, 2].into()));
        assert_eq!(source_for(uri, 65), Some([127, 0, 0, 3].into()));
        assert_eq!(source_for("http://[::1]:50051", 0), None);
    }
}
