//! The gRPC edge. `ChatStream` only wires channels: it admits the stream, starts its Session
//! actor, spawns a reader that forwards every request to the session as actor mail, and returns
//! the session's outbound queue as the response stream.

use std::sync::Arc;

use actix::Addr;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    actors::{Inbound, InboundEnded, session::Session},
    error::Fatal,
    hub::{Hub, Living},
    outbound::{OutboundStream, SessionTx},
    proto::{self, chat_service_server::ChatService},
    transport::reset::StreamReset,
};

pub struct ChatEdge {
    hub: Arc<Hub>,
}

impl ChatEdge {
    pub fn new(hub: Arc<Hub>) -> ChatEdge {
        ChatEdge { hub }
    }
}

#[tonic::async_trait]
impl ChatService for ChatEdge {
    type ChatStreamStream = OutboundStream;

    async fn chat_stream(
        &self,
        request: Request<Streaming<proto::Message>>,
    ) -> Result<Response<OutboundStream>, Status> {
        let authorized = match &self.hub.verifier {
            Some(verifier) => Some(verifier.verify(request.metadata())?),
            None => None,
        };
        let (queue, queue_bytes) = {
            let config = self.hub.config();
            (
                config.session.outbound_queue,
                config.session.outbound_queue_bytes,
            )
        };
        let (tx, outbound) = SessionTx::channel(queue, queue_bytes, StreamReset::current());
        // The stream holds the place: the session counts until the transport lets go of its
        // response, which can outlive the actor while the last messages are written.
        let ip_slot = match request.remote_addr() {
            Some(peer) => Some(
                self.hub
                    .abuse
                    .admit_ip(peer.ip(), &self.hub.config().server)?,
            ),
            None => None,
        };
        let permit = self.hub.sessions.admit(&tx)?.holding_ip(ip_slot);
        let id = permit.id;
        let (stopped_tx, stopped_rx) = oneshot::channel();
        // A token names the session before its first request: kicks by user find it at once.
        if let Some(authorized) = &authorized {
            self.hub.sessions.name(id, authorized.user.clone());
        }
        let session = Session::start(self.hub.clone(), id, tx, stopped_tx, authorized);
        self.hub.sessions.attach(id, session.clone());
        let census = self.hub.census.enter(Living::ReaderTask);
        tokio::spawn(async move {
            forward_requests(request.into_inner(), session, stopped_rx).await;
            drop(census);
        });
        Ok(Response::new(outbound.holding(permit)))
    }
}

/// Reads the request stream and hands each message to the session, one at a time: the next
/// frame is read only once the session has taken the previous one, so a flooding client is held
/// back by HTTP/2 flow control instead of growing a queue.
async fn forward_requests(
    mut requests: Streaming<proto::Message>,
    session: Addr<Session>,
    mut session_stopped: oneshot::Receiver<()>,
) {
    let ended = loop {
        let next = tokio::select! {
            next = requests.next() => next,
            // The session ended on its own (slow consumer, idle, shutdown): stop reading.
            _ = &mut session_stopped => return,
        };
        match next {
            Some(Ok(message)) => {
                if session.send(Inbound(message)).await.is_err() {
                    return;
                }
            }
            Some(Err(status)) => break Some(Fatal::Inbound(status)),
            None => break None,
        }
    };
    let _ = session.send(InboundEnded(ended)).await;
}
