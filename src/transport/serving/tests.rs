//! A stream's pump against a real h2 client over an in-memory pipe: who notices a client's
//! RST_STREAM while the response waits for its next message.

use std::{convert::Infallible, time::Duration};

use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::{sync::oneshot, task::JoinHandle};

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// A response body for a pump to move.
enum TestBody {
    /// Nothing to send yet: the pump waits on it.
    Waiting,
    /// Always another 16 KiB frame: the pump soon waits for send capacity, which a client that
    /// does not read never grants.
    Endless,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match *self {
            TestBody::Waiting => Poll::Pending,
            TestBody::Endless => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0; 16 * 1024])))))
            }
        }
    }
}

/// The server's side of one stream: its request body (as the route's reader holds it) and its
/// pump, running; and the client's send half of the stream.
struct Stream {
    request: RequestBody,
    side: Arc<StreamSide>,
    pump: JoinHandle<()>,
    client: h2::SendStream<Bytes>,
}

/// Opens one stream over a fresh in-memory connection of `window` bytes of pipe; `end_request`
/// ends the request with its headers (as a unary call's client does once it has sent its
/// message). The client's send half, and the server's request and response handle.
async fn open(
    end_request: bool,
    window: usize,
) -> (
    h2::SendStream<Bytes>,
    http::Request<RecvStream>,
    SendResponse<Bytes>,
) {
    let (client_io, server_io) = tokio::io::duplex(window);
    let (accepted_tx, accepted_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        let first = connection.accept().await.unwrap().unwrap();
        let _ = accepted_tx.send(first);
        // Keeps the connection read and written.
        while connection.accept().await.is_some() {}
    });
    let (mut h2, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://localhost/chat.v1.ChatService/ChatStream")
        .body(())
        .unwrap();
    // The response is never read: a client that does not read grants no more than its window.
    let (_response, client) = h2.send_request(request, end_request).unwrap();
    let (request, respond) = tokio::time::timeout(WAIT, accepted_rx)
        .await
        .unwrap()
        .unwrap();
    (client, request, respond)
}

/// Answers `request` through a pump of `body`, started at once.
fn serve(
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    body: impl Body<Data = Bytes> + Unpin + Send + 'static,
) -> (RequestBody, Arc<StreamSide>, JoinHandle<()>) {
    let side = Arc::new(StreamSide::default());
    let request = RequestBody::new(request.into_body(), side.clone());
    let send = respond
        .send_response(http::Response::new(()), false)
        .unwrap();
    let pump = tokio::spawn(Pump::new(body, send, side.clone()));
    (request, side, pump)
}

/// One stream whose pump waits for its body.
async fn stream(end_request: bool) -> Stream {
    let (client, request, respond) = open(end_request, 64 * 1024).await;
    let (request, side, pump) = serve(request, respond, TestBody::Waiting);
    // The test's runtime has one thread: yielding once runs the pump until it waits.
    tokio::task::yield_now().await;
    assert!(!pump.is_finished(), "the pump waits for its body");
    Stream {
        request,
        side,
        pump,
        client,
    }
}

async fn ends(pump: JoinHandle<()>) {
    tokio::time::timeout(WAIT, pump)
        .await
        .expect("the pump ends once the reset is seen")
        .unwrap();
}

#[tokio::test]
async fn a_reset_while_the_request_is_read_reaches_its_reader() {
    let Stream {
        mut request,
        pump,
        mut client,
        ..
    } = stream(false).await;
    client.send_reset(Reason::CANCEL);
    let read = tokio::time::timeout(WAIT, request.frame()).await.unwrap();
    assert!(matches!(read, Some(Err(_))), "the reader sees the reset");
    // The reader ends the session and lets go of the request; the pump then ends too.
    drop(request);
    ends(pump).await;
}

#[tokio::test]
async fn once_the_request_has_ended_the_pump_watches_for_resets_itself() {
    let Stream {
        mut request,
        pump,
        mut client,
        ..
    } = stream(true).await;
    // The reader reads the request to its end and keeps the body, as a route may.
    let read = tokio::time::timeout(WAIT, request.frame()).await.unwrap();
    assert!(read.is_none(), "the request had ended: {read:?}");
    client.send_reset(Reason::CANCEL);
    ends(pump).await;
    drop(request);
}

#[tokio::test]
async fn once_nothing_reads_the_request_the_pump_watches_for_resets_itself() {
    let Stream {
        request,
        pump,
        mut client,
        ..
    } = stream(false).await;
    drop(request);
    client.send_reset(Reason::CANCEL);
    ends(pump).await;
}

#[tokio::test]
async fn while_the_reader_pauses_the_pump_watches_for_resets_itself_every_time() {
    let Stream {
        request,
        side,
        pump,
        mut client,
    } = stream(false).await;
    // A first pause wakes the pump, which goes back to waiting when the pause is over...
    drop(side.pause());
    tokio::task::yield_now().await;
    assert!(!pump.is_finished(), "nothing ended the stream");
    // ... and the next one wakes it again: a reset meanwhile ends it, although the reader
    // (holding the request, not polling it) would not see it before its pause is over.
    let _paused = side.pause();
    client.send_reset(Reason::CANCEL);
    ends(pump).await;
    drop(request);
}

/// Arms `side` and checks that `pump` ends exactly [`RESET_GRACE`] later (time is paused).
async fn armed_ends_after_the_grace(side: &StreamSide, pump: JoinHandle<()>) {
    // Not armed: the pump waits, however long.
    tokio::time::sleep(RESET_GRACE * 10).await;
    assert!(!pump.is_finished(), "an unarmed stream is left alone");
    let armed_at = tokio::time::Instant::now();
    side.arm();
    ends(pump).await;
    assert_eq!(armed_at.elapsed(), RESET_GRACE);
}

#[tokio::test(start_paused = true)]
async fn an_armed_stream_waiting_for_its_body_is_reset_after_the_grace() {
    let Stream {
        side,
        pump,
        request,
        mut client,
    } = stream(false).await;
    armed_ends_after_the_grace(&side, pump).await;
    // On the wire at once, although the reader still holds its half of the stream.
    let reset = tokio::time::timeout(WAIT, std::future::poll_fn(|cx| client.poll_reset(cx)))
        .await
        .expect("the client sees the reset while the request is still held");
    assert_eq!(reset.unwrap(), Reason::CANCEL);
    drop(request);
}

#[tokio::test(start_paused = true)]
async fn wake_ups_during_the_grace_do_not_postpone_the_reset() {
    let Stream {
        side,
        pump,
        request,
        ..
    } = stream(false).await;
    let armed_at = tokio::time::Instant::now();
    side.arm();
    // The reader's pauses wake the pump each time: the deadline stays where it was.
    for _ in 0..4 {
        tokio::time::sleep(RESET_GRACE / 8).await;
        drop(side.pause());
        tokio::task::yield_now().await;
    }
    ends(pump).await;
    assert_eq!(armed_at.elapsed(), RESET_GRACE);
    drop(request);
}

#[tokio::test(start_paused = true)]
async fn armed_before_its_pump_runs_a_stream_ends_a_grace_after_the_pump_starts() {
    let (_client, request, mut respond) = open(false, 64 * 1024).await;
    // Armed while its response is not ready yet (the handler still running).
    let side = Arc::new(StreamSide::default());
    let request = RequestBody::new(request.into_body(), side.clone());
    side.arm();
    tokio::time::sleep(RESET_GRACE * 4).await;
    let send = respond
        .send_response(http::Response::new(()), false)
        .unwrap();
    let started = tokio::time::Instant::now();
    let pump = tokio::spawn(Pump::new(TestBody::Waiting, send, side.clone()));
    ends(pump).await;
    assert_eq!(started.elapsed(), RESET_GRACE);
    drop(request);
}

#[tokio::test(start_paused = true)]
async fn an_armed_stream_waiting_for_capacity_ends_after_the_grace() {
    // The client never reads the response: its stream window (64 KiB) is soon spent.
    let (_client, request, respond) = open(false, 1 << 20).await;
    let (request, side, pump) = serve(request, respond, TestBody::Endless);
    armed_ends_after_the_grace(&side, pump).await;
    drop(request);
}
