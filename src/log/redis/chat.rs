//! A CHAT through Redis: published with a fresh id and no seq or epoch (the script assigns
//! them), and fanned out only when it comes back on the channel. A member's ack waits here for
//! that echo, found by the message id, so the sender hears of its CHAT in the room's one order;
//! the room answers the session's Post only once that echo is fanned out (at most
//! [`ECHO_WAIT`]), so the ack comes before the reply to the session's next request, as in memory
//! mode. A CHAT with a `ref` is remembered in Redis for `dedup_window_ms` by the same script: a
//! resend, on any node, is answered with the original's seq and body and never published.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{RedisLog, sync::body_id, unavailable};
use crate::{
    cluster::{Dedup, Posted, RedisEngine, Unavailable},
    config::RoomLimits,
    error::ChatError,
    log::{self, Accepted},
    names::{RoomName, SYSTEM_USER, SessionId},
    proto,
};

/// An ack whose echo has not come back in this long is forgotten (its publish timed out and
/// may never have happened).
const PENDING_ACK_TTL: Duration = Duration::from_secs(30);

/// How long a member's CHAT waits for its echo before the room answers the session anyway: the
/// session handles its next request only after that answer, so its ack (which rides the echo)
/// comes before the reply to anything it sent next. Bounded so a lost subscription cannot hold
/// the session; its ack then comes when the room re-syncs.
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// A CHAT of this node on its way through Redis: its sender, the sender's `ref`, and the signal
/// that the echo (with the ack) has been fanned out.
pub(super) type PendingAck = (SessionId, String, Instant, Option<oneshot::Sender<()>>);

/// A publish's outcome (see [`RedisLog::append`]).
pub struct Publishing {
    id: String,
    /// A member's CHAT, whose ack waits for the echo: its session and `ref`.
    acked: Option<(SessionId, String)>,
    result: Result<Posted, Unavailable>,
}

impl RedisLog {
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Publishes a CHAT (with a fresh id, no seq: Redis assigns it). A member's ack waits in
    /// `pending` for the echo, which finds it by message id (UUIDs only this node makes).
    pub fn append(
        &mut self,
        user: &str,
        content: String,
        ack: Option<(SessionId, String)>,
        limits: &RoomLimits,
    ) -> impl Future<Output = Publishing> + 'static {
        let message = log::chat(&self.name, user, content, 0, "");
        let body = proto::encode(&message);
        let id = message.id;
        let dedup = match (&ack, limits.dedup_window()) {
            (Some((_, r#ref)), Some(window)) if !r#ref.is_empty() => Some(Dedup {
                user: user.to_string(),
                r#ref: r#ref.clone(),
                window,
            }),
            _ => None,
        };
        let (origin, echoed) = match &ack {
            Some((session, r#ref)) => {
                let (echo, echoed) = oneshot::channel();
                let entry = (*session, r#ref.clone(), Instant::now(), Some(echo));
                self.pending.insert(id.clone(), entry);
                (*session, Some(echoed))
            }
            None => (SessionId(0), None),
        };
        let (engine, name, history) = (self.engine.clone(), self.name.to_string(), limits.history);
        async move {
            let result = engine
                .post_chat(&name, history, &id, origin, body, dedup)
                .await;
            if let Ok(Posted::New(_)) = result
                && let Some(echoed) = echoed
            {
                // The room keeps handling mail meanwhile, the echo included.
                let _ = tokio::time::timeout(ECHO_WAIT, echoed).await;
            }
            Publishing {
                id,
                acked: ack,
                result,
            }
        }
    }

    pub fn published(&mut self, publishing: Publishing) -> Result<Accepted, ChatError> {
        let Publishing { id, acked, result } = publishing;
        match result {
            Ok(Posted::New(seq)) => Ok(Accepted::Published(seq, id)),
            Ok(Posted::Resent { seq, body }) => {
                // No echo comes for a resend: its ack is the original.
                self.pending.remove(&id);
                // unreachable: only a member's CHAT with a `ref` is looked up (see `append`).
                let Some((to, r#ref)) = acked else {
                    unreachable!("a resend always has its sender");
                };
                if seq > self.seq {
                    // Not delivered here yet: the original's echo (or one before it) is still
                    // on its way, or waits for a re-sync. Sent now, the ack would overtake
                    // those CHATs; it rides the original's fan-out instead, like a new CHAT's.
                    let entry = (to, r#ref, Instant::now(), None);
                    self.pending.insert(body_id(&body), entry);
                    return Ok(Accepted::ResentWithEcho);
                }
                let ack = proto::with_ref(&proto::with_seq(&body, seq), &r#ref);
                Ok(Accepted::Resent { to, ack })
            }
            Err(error @ Unavailable::TimedOut { .. }) if acked.is_some() => {
                // Redis may still run the script it was sent: the pending ack stays (for
                // PENDING_ACK_TTL), so if the CHAT does come through, the sender gets it
                // with its ref, after this ERROR.
                Err(ChatError::Unavailable(format!(
                    "{error}; the CHAT may still be delivered (with this ref)"
                )))
            }
            Err(error) => {
                self.pending.remove(&id);
                Err(unavailable(&error))
            }
        }
    }

    /// Takes the ack of CHAT `id` (if this node sent it) and records it as the last delivered.
    pub(super) fn delivered(&mut self, seq: u64, id: &str) -> Option<(SessionId, String)> {
        self.seq = seq;
        self.last_id = Some(id.to_string());
        self.pending.remove(id).map(|(session, r#ref, _, echo)| {
            // Answered after the caller's fan-out: the room runs one handler at a time.
            if let Some(echo) = echo {
                let _ = echo.send(());
            }
            (session, r#ref)
        })
    }

    /// Forgets acks whose publish timed out long ago.
    pub(super) fn forget_stale_acks(&mut self) {
        self.pending
            .retain(|_, (_, _, at, _)| at.elapsed() < PENDING_ACK_TTL);
    }
}

/// An announcement to a room that is not open on this node: published straight to its channel,
/// as its room's log would (the nodes holding it fan it out and keep it in history).
pub async fn publish_announcement(
    engine: &RedisEngine,
    room: &RoomName,
    history: usize,
    content: String,
) -> Result<(u64, String), Unavailable> {
    let message = log::chat(room, SYSTEM_USER, content, 0, "");
    let body = proto::encode(&message);
    let seq = engine
        .publish_chat(room.as_str(), history, &message.id, SessionId(0), body)
        .await?;
    Ok((seq, message.id))
}
