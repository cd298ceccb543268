//! The gRPC edge. `ChatStream` only wires channels: it admits the stream, starts its Session
//! actor, spawns a reader that forwards every request to the session as actor mail, and returns
//! the session's outbound queue as the response stream.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::Addr;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Request, Status};

use super::{
    outbound::{OutboundStream, SessionTx},
    requests::RequestStream,
};
use crate::{
    actors::{Inbound, InboundEnded, env::SessionNames, session::Session},
    census::{Counted, Living},
    error::Fatal,
    hub::Hub,
    limits::TokenBucket,
    metrics, proto,
    transport::{StreamSideExt, serving::StreamSide},
};

pub struct ChatEdge {
    hub: Arc<Hub>,
}

impl ChatEdge {
    pub fn new(hub: Arc<Hub>) -> ChatEdge {
        ChatEdge { hub }
    }
}

impl ChatEdge {
    /// One `ChatStream` call: admits it, starts its session and its request reader, and
    /// returns the session's queue, which [`super::route`] sends as the response.
    pub async fn chat_stream(
        &self,
        request: Request<RequestStream<proto::Message>>,
    ) -> Result<OutboundStream, Status> {
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
        // The stream's side in the server's transport (absent elsewhere, as in tests): its
        // reader pauses through it, its queue arms its reset.
        let side = request
            .extensions()
            .get::<StreamSideExt>()
            .map(|side| side.0.clone());
        let (tx, outbound) = SessionTx::channel(queue, queue_bytes, side.clone());
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
        let session = Session::start(self.hub.session_env.clone(), id, tx, stopped_tx, authorized);
        self.hub.sessions.attach(id, session.clone());
        let census = self.hub.census.enter(Living::ReaderTask);
        // The reader gets the request stream alone: the headers are not kept for its life.
        let requests = request.into_inner();
        tokio::spawn(forward_requests(
            self.hub.clone(),
            requests,
            session,
            stopped_rx,
            census,
            side,
        ));
        Ok(outbound.holding(permit))
    }
}

/// Reads the request stream and hands each message to the session, one at a time: the next
/// frame is read only once the session has taken the previous one, so a flooding client is held
/// back by HTTP/2 flow control instead of growing a queue. The session's request budget
/// (`session.requests_per_sec`) is spent here, before any actor mail: a session over it is
/// simply not read until a token is due, so a PING flood costs the server a timer, not a reply
/// per request, and nothing the client sent is lost.
///
/// The task lives as long as its stream, at the size of its largest state, while an idle stream
/// only waits for its next request. Handing a request over (the message, actix's request with
/// its timer, the throttle's timer) is therefore boxed per request, held only while a request
/// is in flight: one allocation per request against ~1 KiB less per open stream. For the same
/// reason this is not an `async fn`, whose arguments the task would hold twice (as captured and
/// as the body's locals).
#[allow(clippy::manual_async_fn)]
fn forward_requests(
    hub: Arc<Hub>,
    mut requests: RequestStream<proto::Message>,
    session: Addr<Session>,
    mut session_stopped: oneshot::Receiver<()>,
    census: Counted,
    reader: Option<Arc<StreamSide>>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _census = census;
        let mut budget: Option<TokenBucket> = None;
        let ended = loop {
            let handing = tokio::select! {
                next = requests.next() => match next {
                    Some(Ok(message)) => Box::pin(hand_over(
                        &hub,
                        &mut budget,
                        &session,
                        &mut session_stopped,
                        reader.as_ref(),
                        message,
                    )),
                    Some(Err(status)) => break Some(Fatal::Inbound(status)),
                    None => break None,
                },
                // The session ended on its own (slow consumer, idle, shutdown): stop reading.
                _ = &mut session_stopped => return,
            };
            if !handing.await {
                return;
            }
        };
        let _ = Box::pin(session.send(InboundEnded(ended))).await;
    }
}

/// Hands one request to the session once the budget allows it, and waits until the session has
/// taken it; `false` when the session is gone.
async fn hand_over(
    hub: &Hub,
    budget: &mut Option<TokenBucket>,
    session: &Addr<Session>,
    session_stopped: &mut oneshot::Receiver<()>,
    reader: Option<&Arc<StreamSide>>,
    message: proto::Message,
) -> bool {
    if let Some(wait) = spend(budget, hub) {
        metrics::get().throttled.increment(1);
        // Not reading the body meanwhile: the stream's pump watches for the client's reset.
        // (Not while the session takes the request: that is short, and pausing wakes the pump.)
        let _paused = reader.map(StreamSide::pause);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = session_stopped => return false,
        }
    }
    session.send(Inbound(message)).await.is_ok()
}

/// A session over its budget runs into debt until it owes this much time, then pauses for all
/// of it: one timer per pause instead of one per request, and the requests between pauses are
/// answered together (fewer wake-ups and writes). The sustained rate is the same.
const MIN_PAUSE: Duration = Duration::from_millis(20);

/// Takes one request from the session's budget (created full on first use, limits read live so
/// a reload applies at once); returns how long to pause when the budget is spent.
fn spend(budget: &mut Option<TokenBucket>, hub: &Hub) -> Option<Duration> {
    let (rate, burst) = {
        let config = hub.config();
        (
            config.session.requests_per_sec,
            config.session.requests_burst,
        )
    };
    if rate <= 0.0 {
        return None;
    }
    let now = Instant::now();
    let bucket = budget.get_or_insert_with(|| TokenBucket::full(burst, now));
    let owed = bucket.take_or_owe(now, rate, burst);
    (owed >= MIN_PAUSE).then_some(owed)
}
