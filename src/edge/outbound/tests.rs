//! Tests of the member queue: its bounds, its ends and its wake-ups.

use super::*;
use tokio_stream::StreamExt;

#[tokio::test]
async fn full_queue_is_reported_not_awaited() {
    let (tx, _stream) = SessionTx::channel(2, 1 << 20, None);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"1")), Delivery::Sent);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"2")), Delivery::Sent);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"3")), Delivery::Full);
}

#[tokio::test]
async fn a_queue_full_in_bytes_is_full() {
    let (tx, mut stream) = SessionTx::channel(100, 10, None);
    // One message larger than the bound still goes into an empty queue.
    assert_eq!(tx.try_deliver(Bytes::from(vec![b'x'; 64])), Delivery::Sent);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"y")), Delivery::Full);
    assert_eq!(stream.next().await.unwrap().unwrap().len(), 64);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"12345")), Delivery::Sent);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"12345")), Delivery::Sent);
    assert_eq!(tx.try_deliver(Bytes::from_static(b"1")), Delivery::Full);
}

#[tokio::test]
async fn ending_at_once_arms_the_reset_and_draining_does_not() {
    let reset = Arc::new(StreamSide::default());
    let (tx, _stream) = SessionTx::channel(4, 1 << 20, Some(reset.clone()));
    tx.end(Fatal::Shutdown);
    assert!(
        !reset.is_armed(),
        "a shutdown drains, then ends with trailers"
    );
    let reset = Arc::new(StreamSide::default());
    let (tx, _stream) = SessionTx::channel(4, 1 << 20, Some(reset.clone()));
    tx.end(Fatal::IdleTimeout);
    assert!(reset.is_armed());
}

#[tokio::test]
async fn slow_consumer_ends_at_once_dropping_the_backlog() {
    let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
    tx.try_deliver(Bytes::from_static(b"queued"));
    tx.end(Fatal::SlowConsumer);
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(stream.next().await.is_none());
    assert_eq!(
        tx.try_deliver(Bytes::from_static(b"late")),
        Delivery::Closed
    );
}

#[tokio::test]
async fn shutdown_drains_the_queue_first() {
    let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
    tx.try_deliver(Bytes::from_static(b"a"));
    tx.try_deliver(Bytes::from_static(b"b"));
    tx.end(Fatal::Shutdown);
    assert_eq!(stream.next().await.unwrap().unwrap(), "a");
    assert_eq!(stream.next().await.unwrap().unwrap(), "b");
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn dropping_every_sender_ends_cleanly_after_the_backlog() {
    let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
    tx.try_deliver(Bytes::from_static(b"last"));
    drop(tx);
    assert_eq!(stream.next().await.unwrap().unwrap(), "last");
    assert!(stream.next().await.is_none());
}

/// The stream waits (registering its waker) for each of these in turn: a delivery, the
/// last sender going.
#[tokio::test]
async fn a_waiting_stream_is_woken_by_a_delivery_and_by_its_last_sender_going() {
    let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
    let second = tx.clone();
    let waiter = tokio::spawn(async move {
        let first = stream.next().await;
        let end = stream.next().await;
        (first, end)
    });
    tokio::task::yield_now().await;
    assert_eq!(tx.try_deliver(Bytes::from_static(b"hi")), Delivery::Sent);
    drop(tx);
    tokio::task::yield_now().await;
    drop(second);
    let (first, end) = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(first.unwrap().unwrap(), "hi");
    assert!(end.is_none(), "a clean end once every sender is gone");
}

#[tokio::test]
async fn a_closed_stream_refuses_deliveries_and_frees_its_backlog() {
    let (tx, stream) = SessionTx::channel(4, 1 << 20, None);
    let message = Framed::new(&[b'x'; 100]);
    assert_eq!(tx.try_deliver_framed(&message), Delivery::Sent);
    assert!(!message.0.is_unique(), "queued: the same bytes, not a copy");
    drop(stream);
    assert!(message.0.is_unique(), "the backlog went with the stream");
    assert_eq!(tx.try_deliver_framed(&message), Delivery::Closed);
}

#[tokio::test]
async fn end_wakes_a_waiting_stream() {
    let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
    let waiter = tokio::spawn(async move { stream.next().await });
    tokio::task::yield_now().await;
    tx.end(Fatal::IdleTimeout);
    let item = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(item.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_queue_that_grew_for_a_burst_gives_the_room_back_once_drained() {
    let (tx, mut stream) = SessionTx::channel(1024, 1 << 20, None);
    for _ in 0..200 {
        assert_eq!(tx.try_deliver(Bytes::from_static(b"burst")), Delivery::Sent);
    }
    assert!(stream.shared.queue().messages.capacity() >= 200);
    for _ in 0..200 {
        stream.next().await.unwrap().unwrap();
    }
    assert!(stream.shared.queue().messages.capacity() <= 2 * SHRINK_TO);
}

#[tokio::test]
async fn an_end_at_once_wins_over_the_backlog_and_nothing_is_taken_after_it() {
    let (tx, mut stream) = SessionTx::channel(16, 1 << 20, None);
    tx.try_deliver(Bytes::from_static(b"queued"));
    tx.end(Fatal::IdleTimeout);
    let mut taken = 0;
    let waker = Waker::noop();
    let drained = stream.poll_drain(&mut Context::from_waker(waker), 1 << 14, |_| taken += 1);
    assert!(matches!(drained, Poll::Ready(Drained::End(Some(_)))));
    assert_eq!(taken, 0);
    assert_eq!(
        tx.try_deliver(Bytes::from_static(b"late")),
        Delivery::Closed
    );
}
