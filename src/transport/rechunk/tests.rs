//! Tests of re-chunking request frames and the long-frame budget.
use std::convert::Infallible;

use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend(std::iter::repeat_n(fill, len));
    out
}

/// A body whose DATA frames are fed from the test, and the sender that feeds them.
type Fed = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
fn fed() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Fed) {
    let (tx, rx) = mpsc::channel(64);
    (tx, StreamBody::new(ReceiverStream::new(rx)))
}

async fn read_all<B>(body: &mut Rechunked<B>) -> (Vec<u8>, Option<String>)
where
    Rechunked<B>: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let piece = frame.into_data().unwrap();
                assert!(!piece.is_empty() && piece.len() <= MAX_PIECE);
                out.extend_from_slice(&piece);
            }
            Err(error) => return (out, Some(error.to_string())),
        }
    }
    (out, None)
}

#[tokio::test]
async fn frames_come_out_in_pieces_with_every_byte_in_order() {
    let data: Vec<u8> = (0..(5 * MAX_PIECE + 7)).map(|i| i as u8).collect();
    let limits = FrameLimits::new(usize::MAX >> 8, usize::MAX >> 8);
    let mut body = Rechunked::new(Full::new(Bytes::from(data.clone())), limits);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let piece = frame.unwrap().into_data().unwrap();
        assert!(piece.len() <= MAX_PIECE);
        out.extend_from_slice(&piece);
    }
    assert_eq!(out, data);
    assert!(body.is_end_stream());
}

#[tokio::test]
async fn no_piece_can_take_over_the_buffer_the_frame_was_read_into() {
    // HTTP/2 hands over a frame as a slice of a larger read buffer.
    let mut read = frame(3 * MAX_PIECE, 1);
    let len = read.len();
    read.resize(64 * 1024, 0);
    let data = Bytes::from(read).slice(..len);
    let mut body = Rechunked::new(Full::new(data), FrameLimits::new(1 << 20, 1 << 20));
    while let Some(frame) = body.frame().await {
        // What tonic's decoder does with a piece when its own buffer is full.
        let mut decoder = bytes::BytesMut::new();
        bytes::BufMut::put(&mut decoder, frame.unwrap().into_data().unwrap());
        assert!(decoder.capacity() <= MAX_PIECE, "{}", decoder.capacity());
    }
}

#[tokio::test]
async fn prefixes_split_anywhere_are_read_right() {
    let stream: Vec<u8> = [frame(3, 1), frame(0, 2), frame(5000, 3), frame(40, 4)].concat();
    // Every way to cut the stream in two DATA frames, and cuts of every width.
    for cut in (0..stream.len()).step_by(7).chain(0..12) {
        let (tx, body) = fed();
        for part in [&stream[..cut], &stream[cut..]] {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(part))))
                .await
                .unwrap();
        }
        drop(tx);
        let mut body = Rechunked::new(body, FrameLimits::new(5000, 5000));
        assert_eq!(
            read_all(&mut body).await,
            (stream.clone(), None),
            "cut {cut}"
        );
    }
}

#[tokio::test]
async fn a_frame_over_the_limit_fails_the_stream_after_the_frames_before_it() {
    let before = [frame(10, 1), frame(20, 2)].concat();
    let stream = [before.clone(), frame(101, 3)].concat();
    let (tx, body) = fed();
    tx.send(Ok(Frame::data(Bytes::from(stream)))).await.unwrap();
    let mut body = Rechunked::new(body, FrameLimits::new(100, 50));
    let (passed, error) = read_all(&mut body).await;
    assert_eq!(passed, before, "nothing of the long frame is passed on");
    let error = error.expect("the stream fails");
    assert!(error.contains("101 bytes"), "{error}");
    // Exactly the limit passes.
    let (tx, body) = fed();
    tx.send(Ok(Frame::data(Bytes::from(frame(100, 3)))))
        .await
        .unwrap();
    drop(tx);
    let mut body = Rechunked::new(body, FrameLimits::new(100, 50));
    assert_eq!(read_all(&mut body).await.1, None);
}

/// Reads the body's pieces until `n` bytes have passed.
async fn pass<B>(body: &mut Rechunked<B>, n: usize) -> Vec<u8>
where
    Rechunked<B>: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut passed = Vec::new();
    while passed.len() < n {
        let piece = body.frame().await.unwrap().unwrap().into_data().unwrap();
        passed.extend_from_slice(&piece);
    }
    passed
}

/// The first `n` bytes of a `len`-byte frame of `fill`.
fn start_of(len: usize, fill: u8, n: usize) -> Bytes {
    Bytes::from(frame(len, fill)[..n].to_vec())
}

#[tokio::test]
async fn a_long_frame_holds_the_budget_while_it_passes_and_the_oldest_holders_give_it_up() {
    let limits = FrameLimits::new(1000, 100);
    let budget = LARGE_FRAMES * 1000;
    // Streams holding the whole budget: each half-way through a full-size frame, oldest first.
    let mut holders = Vec::new();
    for _ in 0..LARGE_FRAMES {
        let (tx, body) = fed();
        tx.send(Ok(Frame::data(start_of(1000, 1, PREFIX_BYTES + 500))))
            .await
            .unwrap();
        let mut body = Rechunked::new(body, limits.clone());
        pass(&mut body, PREFIX_BYTES + 500).await;
        holders.push((tx, body));
    }
    assert_eq!(limits.large_frame_bytes_free(), 0);
    // Another stream's small frame passes freely; its large one takes its length back from
    // the oldest holder at once instead of waiting, and gives it back once it has passed.
    let (tx, body) = fed();
    let stream = [frame(100, 2), frame(101, 3), frame(50, 4)].concat();
    tx.send(Ok(Frame::data(Bytes::from(stream.clone()))))
        .await
        .unwrap();
    let mut newcomer = Rechunked::new(body, limits.clone());
    assert_eq!(pass(&mut newcomer, stream.len()).await, stream);
    assert_eq!(
        limits.large_frame_bytes_free(),
        1000,
        "the oldest holder's bytes came back, and the newcomer holds none once its frame passed"
    );
    // The oldest holder ends at its next read.
    let (_, oldest) = &mut holders[0];
    let ended = oldest.frame().await.unwrap().unwrap_err().to_string();
    assert!(ended.contains("needed by another stream"), "{ended}");
    // Free bytes are taken before anyone's.
    let (tx2, body) = fed();
    tx2.send(Ok(Frame::data(start_of(1000, 6, PREFIX_BYTES + 10))))
        .await
        .unwrap();
    let mut second = Rechunked::new(body, limits.clone());
    pass(&mut second, PREFIX_BYTES + 10).await;
    assert_eq!(limits.large_frame_bytes_free(), 0);
    // The next stream short of bytes takes them from the next oldest, and only from it.
    let (tx3, body) = fed();
    tx3.send(Ok(Frame::data(Bytes::from(frame(101, 7)))))
        .await
        .unwrap();
    let mut third = Rechunked::new(body, limits.clone());
    pass(&mut third, PREFIX_BYTES + 101).await;
    let (_, gone) = &mut holders[1];
    assert!(gone.frame().await.unwrap().is_err());
    assert_eq!(limits.large_frame_bytes_free(), 1000);
    // A holder that finishes its frame goes on, and gives its bytes back.
    let (tx_kept, kept) = &mut holders[2];
    let rest = [frame(1000, 1)[PREFIX_BYTES + 500..].to_vec(), frame(10, 5)].concat();
    tx_kept
        .send(Ok(Frame::data(Bytes::from(rest.clone()))))
        .await
        .unwrap();
    assert_eq!(pass(kept, rest.len()).await, rest);
    assert_eq!(limits.large_frame_bytes_free(), 2000);
    drop((newcomer, tx, second, tx2, third, tx3, holders));
    assert_eq!(limits.large_frame_bytes_free(), budget, "all given back");
}

#[tokio::test]
async fn a_stream_sending_long_frames_all_day_leaves_one_holder_behind_at_most() {
    let limits = FrameLimits::new(1000, 100);
    let (tx, body) = fed();
    let mut body = Rechunked::new(body, limits.clone());
    for n in 0..100 {
        tx.send(Ok(Frame::data(Bytes::from(frame(500, n)))))
            .await
            .unwrap();
        pass(&mut body, PREFIX_BYTES + 500).await;
        assert_eq!(limits.large_frame_bytes_free(), LARGE_FRAMES * 1000);
    }
    assert!(limits.holders_queued() <= 1, "{}", limits.holders_queued());
}
