//! Frames whole, in pieces, several to a chunk; the buffer let go between frames; tonic's errors.

use super::*;
use crate::proto::{self, Kind};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio_stream::StreamExt;

fn chat(content: &str) -> proto::Message {
    proto::Message {
        kind: Kind::Chat.into(),
        room: "r".into(),
        content: content.into(),
        ..Default::default()
    }
}

fn framed(message: &proto::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// A body of these DATA chunks, then `end` (an error) or its end.
fn body(chunks: Vec<Vec<u8>>, end: Option<Status>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|chunk| Ok(Frame::data(Bytes::from(chunk))))
        .chain(end.map(Err));
    Body::new(StreamBody::new(tokio_stream::iter(frames)))
}

async fn all(requests: RequestStream<proto::Message>) -> Vec<Result<proto::Message, Status>> {
    requests.collect().await
}

#[tokio::test]
async fn whole_frames_several_to_a_chunk_and_a_frame_in_single_bytes_are_all_decoded() {
    let (a, b, c) = (chat("a"), chat(&"b".repeat(5000)), chat(""));
    let mut first = framed(&a);
    first.extend(framed(&b));
    let pieces = framed(&c).into_iter().map(|byte| vec![byte]);
    let chunks = std::iter::once(first).chain(pieces).collect();
    let decoded: Vec<_> = all(RequestStream::new(body(chunks, None), 1 << 20))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(decoded, vec![a, b, c]);
}

#[tokio::test]
async fn a_frame_gathered_from_pieces_leaves_no_buffer_behind() {
    let big = framed(&chat(&"x".repeat(4000)));
    let (head, tail) = big.split_at(3); // the prefix itself split
    let (middle, last) = tail.split_at(2000);
    let chunks = vec![head.to_vec(), middle.to_vec(), last.to_vec()];
    let mut requests = RequestStream::<proto::Message>::new(body(chunks, None), 1 << 20);
    let message = requests.next().await.unwrap().unwrap();
    assert_eq!(message.content.len(), 4000);
    assert_eq!(requests.partial.capacity(), 0, "the frame's buffer is gone");
    assert!(requests.rest.is_empty());
    assert!(requests.next().await.is_none());
}

#[tokio::test]
async fn bad_frames_end_the_stream_with_tonics_codes() {
    let compressed = {
        let mut frame = framed(&chat("z"));
        frame[0] = 1;
        frame
    };
    let over = framed(&chat(&"y".repeat(100)));
    let mut garbage = vec![0, 0, 0, 0, 3];
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    // A body that ends inside a frame.
    let mut cut = framed(&chat("cut"));
    cut.pop();
    for (chunk, limit, code, then) in [
        (compressed, 1 << 20, Code::Internal, Some(chat("after"))),
        (over, 50, Code::OutOfRange, Some(chat("after"))),
        (garbage, 1 << 20, Code::InvalidArgument, Some(chat("after"))),
        (cut, 1 << 20, Code::Internal, None),
    ] {
        let mut chunks = vec![framed(&chat("before"))];
        chunks.push(chunk);
        chunks.extend(then.as_ref().map(framed));
        let results = all(RequestStream::new(body(chunks, None), limit)).await;
        assert_eq!(results.len(), 2, "{code:?}: {results:?}");
        assert_eq!(results[0].as_ref().unwrap().content, "before");
        assert_eq!(results[1].as_ref().unwrap_err().code(), code, "{results:?}");
    }
}

#[tokio::test]
async fn a_cancelled_call_ends_cleanly_and_other_body_errors_pass_through() {
    let cancelled = body(vec![framed(&chat("one"))], Some(Status::cancelled("gone")));
    let results = all(RequestStream::new(cancelled, 1 << 20)).await;
    assert_eq!(results.len(), 1);
    let failed = body(vec![], Some(Status::resource_exhausted("frame over limit")));
    let results = all(RequestStream::<proto::Message>::new(failed, 1 << 20)).await;
    assert_eq!(
        results[0].as_ref().unwrap_err().code(),
        Code::ResourceExhausted
    );
}
