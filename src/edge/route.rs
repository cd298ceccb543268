//! The `chat.v1.ChatService` route, in place of a generated server: it decodes the request
//! stream with [`RequestStream`] and answers with [`OutboundBody`], which hands the
//! session's queued messages (already encoded and framed by the room) to HTTP/2 as DATA frames:
//! a lone message as it is, every message waiting when the stream is polled gathered into one
//! frame, with no encode buffer kept per stream. The end of the queue becomes the trailers: `grpc-status` 0, or the status
//! the session was ended with.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body_util::Either;
use hyper::body::Frame;
use tonic::{Status, body::Body};

use super::{
    outbound::{Drained, OutboundStream},
    requests::RequestStream,
    service::ChatEdge,
};
use crate::transport::DirectRoute;

/// The service's path prefix, and its one method.
const SERVICE: &str = "/chat.v1.ChatService";
const CHAT_STREAM: &str = "/chat.v1.ChatService/ChatStream";
/// Messages gathered into one DATA frame, at most (h2 splits larger ones into frames of the
/// peer's maximum frame size, 16 KiB by default).
const FRAME_BYTES: usize = 16 * 1024;

/// `ChatEdge` as the transport's direct route (see [`DirectRoute`]).
#[derive(Clone)]
pub struct ChatRoute {
    edge: Arc<ChatEdge>,
    /// Largest request message accepted (`hub.frame_limit()`).
    max_request_bytes: usize,
}

impl ChatRoute {
    pub fn new(edge: ChatEdge, max_request_bytes: usize) -> ChatRoute {
        ChatRoute {
            edge: Arc::new(edge),
            max_request_bytes,
        }
    }
}

/// The body of a ChatStream answer: the session's messages, or a refusal's status alone.
pub type ChatBody = Either<OutboundBody, Body>;

impl DirectRoute for ChatRoute {
    type Body = ChatBody;

    fn claims(&self, path: &str) -> bool {
        is_chat_service(path)
    }

    fn call(
        &self,
        request: http::Request<Body>,
    ) -> impl Future<Output = http::Response<ChatBody>> + Send + 'static {
        let route = self.clone();
        async move { route.respond(request).await }
    }
}

fn is_chat_service(path: &str) -> bool {
    path.strip_prefix(SERVICE)
        .is_some_and(|method| method.starts_with('/'))
}

impl ChatRoute {
    async fn respond(&self, request: http::Request<Body>) -> http::Response<ChatBody> {
        let refusal = |status: Status| status.into_http().map(Either::Right);
        if request.uri().path() != CHAT_STREAM {
            return refusal(Status::unimplemented(""));
        }
        // No compression is offered (gRPC's "identity" only), as before with tonic's defaults.
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            let mut refusal = refusal(Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
            refusal
                .headers_mut()
                .insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
            return refusal;
        }
        let (parts, body) = request.into_parts();
        let requests = RequestStream::new(body, self.max_request_bytes);
        let request = tonic::Request::from_http(http::Request::from_parts(parts, requests));
        match self.edge.chat_stream(request).await {
            Ok(outbound) => {
                let mut response = http::Response::new(Either::Left(OutboundBody::new(outbound)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                response
            }
            Err(status) => refusal(status),
        }
    }
}

/// A session's response body: its queued messages as gRPC messages, then the trailers.
#[derive(Debug)]
pub struct OutboundBody {
    stream: OutboundStream,
    /// The trailers, once the queue has ended; `None` again once sent. Boxed: the body lives as
    /// long as its stream, and a header map is twice the rest of it.
    trailers: Option<Box<HeaderMap>>,
    ended: bool,
}

impl OutboundBody {
    pub fn new(stream: OutboundStream) -> OutboundBody {
        OutboundBody {
            stream,
            trailers: None,
            ended: false,
        }
    }

    /// Ends the body after what was framed: with the status's trailers, or `grpc-status: 0`.
    fn end_with(&mut self, status: Option<Status>) {
        let mut trailers = HeaderMap::with_capacity(2);
        match status {
            Some(status) => {
                if status.add_header(&mut trailers).is_err() {
                    // A message that cannot be a header value: the code alone still tells.
                    trailers.clear();
                    trailers.insert("grpc-status", code_header(status.code()));
                }
            }
            None => {
                trailers.insert("grpc-status", code_header(tonic::Code::Ok));
            }
        }
        self.trailers = Some(Box::new(trailers));
    }
}

fn code_header(code: tonic::Code) -> HeaderValue {
    HeaderValue::from(code as i32)
}

impl hyper::body::Body for OutboundBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // One message goes out as it was framed; several are gathered into one frame.
        let mut single: Option<Bytes> = None;
        let mut gathered: Option<BytesMut> = None;
        if this.trailers.is_none() {
            let put = |message: Bytes| match (&mut gathered, single.take()) {
                (Some(data), _) => data.extend_from_slice(&message),
                (None, None) => single = Some(message),
                (None, Some(first)) => {
                    let mut data = BytesMut::with_capacity(FRAME_BYTES.min(4 * first.len()));
                    data.extend_from_slice(&first);
                    data.extend_from_slice(&message);
                    gathered = Some(data);
                }
            };
            match this.stream.poll_drain(cx, FRAME_BYTES, put) {
                // The pump asks again once it has sent this frame.
                Poll::Ready(Drained::Messages) | Poll::Pending => {}
                Poll::Ready(Drained::End(status)) => this.end_with(status),
            }
        }
        if let Some(data) = gathered.map(BytesMut::freeze).or(single) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match this.trailers.take() {
            Some(trailers) => {
                this.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(*trailers))))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        edge::outbound::{PREFIX_BYTES, SessionTx},
        error::Fatal,
    };
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    async fn frame(body: &mut OutboundBody) -> Frame<Bytes> {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(2), body.frame()).await;
        // unwrap: the test fails here if no frame comes.
        frame.unwrap().unwrap().unwrap()
    }

    /// The gRPC messages of one DATA frame.
    fn messages(mut data: Bytes) -> Vec<Bytes> {
        let mut messages = Vec::new();
        while !data.is_empty() {
            assert_eq!(data[0], 0, "not compressed");
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            messages.push(data.slice(PREFIX_BYTES..PREFIX_BYTES + len));
            data = data.slice(PREFIX_BYTES + len..);
        }
        messages
    }

    #[test]
    fn the_route_claims_its_service_and_nothing_else() {
        assert!(is_chat_service(CHAT_STREAM));
        assert!(is_chat_service("/chat.v1.ChatService/Other"));
        assert!(!is_chat_service("/chat.v1.ChatServiceX/ChatStream"));
        assert!(!is_chat_service("/chat.v1.AdminService/ListRooms"));
        assert!(!is_chat_service("/grpc.health.v1.Health/Check"));
    }

    #[tokio::test]
    async fn what_is_queued_goes_out_in_one_frame_and_a_clean_end_is_status_0() {
        let (tx, stream) = SessionTx::channel(16, 1 << 20, None);
        let mut body = OutboundBody::new(stream);
        for message in ["one", "two", "three"] {
            tx.try_deliver(Bytes::from(message));
        }
        let data = frame(&mut body).await.into_data().unwrap();
        assert_eq!(messages(data), ["one", "two", "three"]);
        tx.try_deliver(Bytes::from_static(b"last"));
        drop(tx);
        let data = frame(&mut body).await.into_data().unwrap();
        assert_eq!(messages(data), ["last"]);
        let trailers = frame(&mut body).await.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_lone_message_is_sent_as_it_was_framed_without_a_copy() {
        use crate::edge::outbound::Framed;
        let (tx, stream) = SessionTx::channel(16, 1 << 20, None);
        let mut body = OutboundBody::new(stream);
        let framed = Framed::new(b"fan-out");
        tx.try_deliver_framed(&framed);
        let data = frame(&mut body).await.into_data().unwrap();
        assert_eq!(messages(data.clone()), ["fan-out"]);
        let queued = tx.try_deliver_framed(&framed);
        assert_eq!(queued, crate::edge::outbound::Delivery::Sent);
        let again = frame(&mut body).await.into_data().unwrap();
        assert_eq!(again.as_ptr(), data.as_ptr(), "the fan-out's own bytes");
    }

    #[tokio::test]
    async fn an_ended_session_ends_with_its_status_and_drops_the_backlog() {
        let (tx, stream) = SessionTx::channel(16, 1 << 20, None);
        let mut body = OutboundBody::new(stream);
        tx.try_deliver(Bytes::from_static(b"never sent"));
        tx.end(Fatal::SlowConsumer);
        let trailers = frame(&mut body).await.into_trailers().unwrap();
        assert_eq!(
            trailers["grpc-status"],
            (tonic::Code::ResourceExhausted as i32).to_string()
        );
        assert!(trailers.contains_key("grpc-message"));
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_large_backlog_is_cut_into_frames_of_about_frame_bytes() {
        let (tx, stream) = SessionTx::channel(64, 1 << 20, None);
        let mut body = OutboundBody::new(stream);
        for _ in 0..40 {
            tx.try_deliver(Bytes::from(vec![b'x'; 1000]));
        }
        let mut sizes = Vec::new();
        let mut received = 0;
        while received < 40 {
            let data = frame(&mut body).await.into_data().unwrap();
            sizes.push(data.len());
            received += messages(data).len();
        }
        assert_eq!(received, 40);
        // 17 messages of 1,005 bytes pass 16 KiB: two full frames, then the other 6.
        assert_eq!(sizes, [17 * 1005, 17 * 1005, 6 * 1005]);
    }
}
