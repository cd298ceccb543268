//! The transport's own guarantees: a stream the server ends is ended on the wire even when the
//! client never reads (a half-closed stream cut at the idle timeout), a socket that never speaks
//! HTTP/2 is closed at the handshake timeout, HTTP/1 and non-gRPC requests get the HTTP answer
//! the gRPC spec names, the chat service's own refusals go out as headers alone, and
//! `max_connections` and `max_connections_per_ip` hold.

mod common;

use std::time::Duration;

use chatrooms::proto::Kind;
use common::{QUIET, TestServer, WAIT, small_window_client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// Reads until the server closes the socket; the bytes it sent first.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    timeout(WAIT, socket.read_to_end(&mut got))
        .await
        .expect("the server closes the socket in time")
        .ok();
    got
}

#[tokio::test]
async fn a_half_closed_stream_that_is_never_read_is_cut_at_the_idle_timeout() {
    let server = TestServer::start(
        "[session]\nidle_timeout_ms = 300\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\n",
    )
    .await;
    let mut quiet = small_window_client(server.endpoint(), "quiet").await;
    quiet.join("r").await;
    let mut sender = server.client("sender").await;
    sender.join("r").await;
    // More than the quiet client's 16 KiB window, far less than its queue: it is no slow
    // consumer, its stream just cannot be written out while it does not read.
    let body = "x".repeat(1000);
    for n in 0..40 {
        sender.chat("r", &format!("{n}{body}")).await;
        sender.expect(Kind::Chat).await;
    }
    quiet.close_send();
    // The sender keeps its own session alive; the quiet one is cut at its idle timeout and
    // released although it never reads.
    let keep_alive = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            sender.send_kind(Kind::Ping, "").await;
            sender.until(|m| m.kind() == Kind::Pong).await;
        }
    });
    server.wait_sessions(1).await;
    keep_alive.abort();
    let (received, status) = quiet.drain_to_end().await;
    let chats = received.iter().filter(|m| m.kind() == Kind::Chat).count();
    assert!(chats < 40, "cut off, not drained: {chats} CHATs");
    assert_eq!(status.expect("ended").code(), tonic::Code::Cancelled);
}

#[tokio::test]
async fn silent_sockets_are_closed_at_the_handshake_timeout() {
    let server = TestServer::start("[server]\nhandshake_timeout_ms = 300\n").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Half the preface is no better than none.
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    silent.push(partial);
    for socket in &mut silent {
        assert!(until_closed(socket).await.is_empty());
    }
    // A client that does speak HTTP/2 is served as before.
    let mut fresh = server.client("fresh").await;
    fresh.join("r").await;
}

#[tokio::test]
async fn http1_gets_a_plain_answer_and_the_connection_closed() {
    let server = TestServer::start("").await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(until_closed(&mut socket).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 505 "), "{answer}");
    assert!(answer.contains("gRPC"), "{answer}");
}

/// Sends one HTTP/2 request with `method` and `content_type` and returns the response status.
async fn h2_status(server: &TestServer, method: &str, content_type: Option<&str>) -> u16 {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder().method(method).uri(format!(
        "http://{}/chat.v1.ChatService/ChatStream",
        server.addr
    ));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let (response, _body) = h2.send_request(request.body(()).unwrap(), true).unwrap();
    let response = timeout(WAIT, response).await.expect("answered").unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn non_grpc_requests_get_the_http_answer_the_spec_names() {
    let server = TestServer::start("").await;
    assert_eq!(h2_status(&server, "GET", None).await, 405);
    assert_eq!(h2_status(&server, "POST", Some("text/plain")).await, 415);
    assert_eq!(h2_status(&server, "POST", None).await, 415);
    assert_eq!(
        h2_status(&server, "POST", Some("application/grpcx")).await,
        415
    );
    // A gRPC request with no body is still gRPC: it gets a 200 with a gRPC status.
    assert_eq!(
        h2_status(&server, "POST", Some("application/grpc+proto")).await,
        200
    );
    server.wait_sessions(0).await;
}

/// `message` as one gRPC message (uncompressed, length-prefixed).
fn grpc_frame(message: &chatrooms::proto::Message) -> bytes::Bytes {
    use prost::Message as _;
    let encoded = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame.into()
}

/// A JOIN of room `r` as one gRPC message.
fn join_frame(user: &str) -> bytes::Bytes {
    grpc_frame(&chatrooms::proto::Message {
        user: user.into(),
        room: "r".into(),
        kind: Kind::Join as i32,
        ..Default::default()
    })
}

/// A PING as one gRPC message.
fn ping_frame() -> bytes::Bytes {
    grpc_frame(&chatrooms::proto::Message {
        kind: Kind::Ping as i32,
        ..Default::default()
    })
}

/// A raw h2 `ChatStream` of `user` in room `r`, its JOINED read: the connection's task, the
/// request's send half and the response body.
async fn raw_joined_stream(
    server: &TestServer,
    user: &str,
) -> (
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    h2::SendStream<bytes::Bytes>,
    h2::RecvStream,
) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/chat.v1.ChatService/ChatStream",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.send_request(request, false).unwrap();
    send.send_data(join_frame(user), false).unwrap();
    let mut body = timeout(WAIT, response)
        .await
        .expect("answered")
        .unwrap()
        .into_body();
    timeout(WAIT, body.data())
        .await
        .expect("JOINED in time")
        .expect("a DATA frame")
        .unwrap();
    (connection, send, body)
}

#[tokio::test]
async fn a_stream_the_client_resets_while_still_sending_is_released_at_once() {
    let server = TestServer::start("").await;
    // The session is in the room, its response waits for the next message; the connection
    // stays open throughout: only the stream is reset.
    let (connection, mut send, _body) = raw_joined_stream(&server, "raw").await;
    let mut other = server.client("other").await;
    other.join("r").await;
    server.wait_sessions(2).await;
    send.send_reset(h2::Reason::CANCEL);
    // The stream's task ends and gives its place back, and the room sees the member go.
    server.wait_sessions(1).await;
    other
        .until(|m| m.kind() == Kind::Leave && m.user == "raw")
        .await;
    assert!(
        !connection.is_finished(),
        "the connection itself stays open"
    );
}

#[tokio::test]
async fn a_stream_reset_while_its_reader_is_throttled_is_released_at_once() {
    // A burst of two (the JOIN and one PING), then one request per 100 s: the reader pauses.
    let server =
        TestServer::start("[session]\nrequests_per_sec = 0.01\nrequests_burst = 2\n").await;
    let (connection, mut send, mut body) = raw_joined_stream(&server, "raw").await;
    server.wait_sessions(1).await;
    // Two PINGs in one DATA frame: once the first is answered, the server has the second,
    // which is over the budget: the reader sleeps on the throttle before it reads again.
    send.send_data([ping_frame(), ping_frame()].concat().into(), false)
        .unwrap();
    timeout(WAIT, body.data())
        .await
        .expect("PONG in time")
        .expect("a DATA frame")
        .unwrap();
    send.send_reset(h2::Reason::CANCEL);
    // The client is gone: its place (session slot, IP slot, queue) is given back at once.
    server.wait_sessions(0).await;
    assert!(
        !connection.is_finished(),
        "the connection itself stays open"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_place() {
    let server =
        TestServer::start("[server]\nmax_connections = 2\nhandshake_timeout_ms = 60000\n").await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    // Both places are held by sockets that stay silent: a third client waits in the backlog.
    let endpoint = server.endpoint();
    let mut waiting = tokio::spawn(async move {
        let channel = endpoint.connect().await.unwrap();
        common::Client::open(channel, "third").await
    });
    assert!(
        timeout(QUIET, &mut waiting).await.is_err(),
        "served beyond max_connections"
    );
    drop(first);
    let mut third = timeout(WAIT, waiting)
        .await
        .expect("served once a place frees")
        .unwrap();
    third.join("r").await;
}

#[tokio::test]
async fn an_ip_over_max_connections_per_ip_has_its_extra_connection_closed() {
    let server =
        TestServer::start("[server]\nmax_connections_per_ip = 2\nhandshake_timeout_ms = 60000\n")
            .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    // Closed at once, long before the handshake timeout would close it.
    assert!(until_closed(&mut third).await.is_empty());
    drop(first);
    // The place comes back: a real client is served (retrying while the close is processed).
    let served = timeout(WAIT, async {
        loop {
            if let Ok(channel) = server.endpoint().connect().await
                && let Ok(mut client) = common::Client::try_open(channel, "back").await
            {
                client.join("r").await;
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(served.is_ok(), "a freed place serves a new client");
}

#[tokio::test]
async fn the_metrics_endpoint_closes_a_socket_that_never_sends_its_request() {
    let server = TestServer::start("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let addr = server.metrics_addr.expect("metrics endpoint on");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Closed at the endpoint's 5 s header timeout; `until_closed` fails the test after 10 s.
    until_closed(&mut silent).await;
    // Still serving scrapes.
    let mut scrape = TcpStream::connect(addr).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&until_closed(&mut scrape).await).starts_with("HTTP/1.1 200"));
}

/// A CHAT of `content` in room `r` as one gRPC message.
fn chat_frame(content: &str) -> bytes::Bytes {
    grpc_frame(&chatrooms::proto::Message {
        room: "r".into(),
        kind: Kind::Chat as i32,
        content: content.into(),
        ..Default::default()
    })
}

/// The configuration of the large-frame tests: frames up to 16 KiB, so the large-frame budget
/// is 32 × 16 KiB and a 16 KiB CHAT (over `max_message_bytes` + 2 KiB) draws on it.
const SMALL_FRAMES: &str =
    "[server]\nmax_frame_bytes = 16384\n[limits]\nrate_per_sec = 100000\nburst = 100000\n";

/// Reads what `body` has received so far (presence messages of the room); true once it has
/// read the stream's end.
async fn read_to_end_now(body: &mut h2::RecvStream) -> bool {
    loop {
        // A zero timeout still polls once: whatever is there now.
        match timeout(Duration::ZERO, body.data()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => panic!("the stream was reset instead of ended: {error}"),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Frames longer than any room accepts draw on a server-wide budget of 32 × `max_frame_bytes`
/// while they pass. A frame that has passed used to keep its bytes until its stream ended, so
/// after 32 clients had each had one long CHAT refused, the next long frame anywhere ended the
/// stream of the first of them, a client that had done nothing wrong since.
#[tokio::test]
async fn a_client_whose_long_chat_was_refused_keeps_its_stream_when_others_send_long_frames() {
    let server = TestServer::start(SMALL_FRAMES).await;
    let long = "x".repeat(16 * 1024 - 64);
    let mut clients = Vec::new();
    for n in 0..40 {
        let mut client = server.client(&format!("c{n}")).await;
        client.join("r").await;
        client.chat("r", &long).await;
        client.expect_error("message_too_large").await;
        clients.push(client);
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let said = format!("still here {n}");
        client.chat("r", &said).await;
        client
            .until(|m| m.kind() == Kind::Chat && m.content == said)
            .await;
    }
}

/// Streams part-way through a long frame hold its length of the budget. One client opening 32
/// streams, starting one long frame on each and idling, used to hold it all for as long as it
/// liked: every other stream's long frame (and everything it sent after it) then waited without
/// end. A stream that needs the budget now takes it back from the stream that has held it
/// longest, which ends with RESOURCE_EXHAUSTED.
#[tokio::test]
async fn streams_holding_the_large_frame_budget_cannot_starve_another_stream() {
    let server = TestServer::start(SMALL_FRAMES).await;
    let long = chat_frame(&"x".repeat(16 * 1024 - 64));
    let mut hoarders = Vec::new();
    for n in 0..32 {
        let (connection, mut send, body) = raw_joined_stream(&server, &format!("h{n}")).await;
        send.send_data(long.slice(..long.len() / 2), false).unwrap();
        hoarders.push((connection, send, body));
    }
    let mut honest = server.client("honest").await;
    honest.join("r").await;
    // The hoarders' half frames reach their readers in their own time: the honest client's
    // long frames take the budget back once they have, each answered before the next is sent
    // (bounded: one hoarder is enough).
    let mut ended = None;
    'attempts: for _ in 0..64 {
        honest.chat("r", &"y".repeat(8 * 1024)).await;
        let refused = honest.until(|m| m.kind() == Kind::Error).await;
        assert_eq!(refused.code, "message_too_large", "{refused:?}");
        for (_, _, body) in &mut hoarders {
            if read_to_end_now(body).await {
                ended = Some(
                    timeout(WAIT, body.trailers())
                        .await
                        .expect("trailers in time"),
                );
                break 'attempts;
            }
        }
    }
    let trailers = ended
        .expect("a hoarder gave its budget up")
        .unwrap()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "8", "{trailers:?}");
    let message = trailers["grpc-message"].to_str().unwrap();
    assert!(message.contains("budget"), "{message}");
    honest.chat("r", "and the stream goes on").await;
    honest
        .until(|m| m.kind() == Kind::Chat && m.content == "and the stream goes on")
        .await;
}

/// A request to the chat service as a raw HTTP/2 client sends it; its response headers.
async fn chat_service_answer(
    server: &TestServer,
    path: &str,
    encoding: Option<&str>,
) -> (u16, http::HeaderMap) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let (response, _body) = h2.send_request(request.body(()).unwrap(), true).unwrap();
    let response = timeout(WAIT, response).await.expect("answered").unwrap();
    (response.status().as_u16(), response.headers().clone())
}

#[tokio::test]
async fn the_chat_services_other_paths_and_compressed_requests_are_refused_in_its_headers() {
    let server = TestServer::start("").await;
    for path in [
        "/chat.v1.ChatService/Nope",
        "/chat.v1.ChatService/",
        "/chat.v1.ChatService/ChatStream/x",
        "/chat.v1.Nope/ChatStream",
    ] {
        let (status, headers) = chat_service_answer(&server, path, None).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["grpc-status"], "12", "{path}: {headers:?}");
        assert_eq!(headers["content-type"], "application/grpc", "{path}");
    }
    let (status, headers) =
        chat_service_answer(&server, "/chat.v1.ChatService/ChatStream", Some("gzip")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "12");
    assert_eq!(headers["grpc-accept-encoding"], "identity");
    server.wait_sessions(0).await;
}
