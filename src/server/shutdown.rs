//! The ordered stop once the shutdown future resolves: health NOT_SERVING and new streams
//! refused, every session ended and its queue drained, then the transport closed, all within
//! `shutdown_grace_ms`; and, in cluster mode, the rooms' last LEAVEs flushed to Redis so other
//! nodes see this node's members go at once.

use std::{future::Future, time::Duration};

use tokio::{sync::oneshot, time::Instant};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use super::health::set_health;
use crate::hub::Hub;

/// The shutdown order. `serve` keeps being polled throughout, so the transport goes on accepting
/// while sessions drain and a new stream gets a clear UNAVAILABLE instead of a hung connect.
pub(super) async fn shut_down<F>(
    hub: &Hub,
    health: &HealthReporter,
    mut serve: std::pin::Pin<&mut F>,
    stop_transport: oneshot::Sender<()>,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<()>>,
{
    let grace_ms = hub.config().server.shutdown_grace_ms;
    let deadline = Instant::now() + Duration::from_millis(grace_ms);
    info!(
        sessions = hub.sessions.len(),
        grace_ms, "shutdown: health NOT_SERVING, refusing new streams, ending sessions"
    );
    set_health(health, ServingStatus::NotServing).await;
    hub.sessions.shut_down();
    // A session counts until the transport drops its response stream, i.e. until its queue
    // has been written out.
    let mut open = hub.sessions.watch_count();
    let drained = tokio::time::timeout_at(deadline, open.wait_for(|n| *n == 0));
    tokio::select! {
        result = &mut serve => return result,
        drained = drained => if drained.is_err() {
            warn!(sessions = hub.sessions.len(), "shutdown: streams still draining at the end of the grace period");
        },
    }
    info!("shutdown: closing the transport");
    let _ = stop_transport.send(());
    match tokio::time::timeout_at(deadline, serve).await {
        Ok(result) => result,
        Err(_) => {
            warn!(
                grace_ms,
                "shutdown: grace period over, cutting the remaining streams"
            );
            Ok(())
        }
    }
}

/// Cluster mode, at shutdown: every session has ended; each room is asked a question that it
/// answers only after the LEAVEs queued before it have reached Redis (a room holds its mail
/// while one is in flight), so the other nodes see this node's members go now, not after the
/// presence TTL. Bounded: a Redis that does not answer leaves it to the TTL.
pub(super) async fn flush_rooms(hub: &Hub) {
    const FLUSH: Duration = Duration::from_secs(3);
    let mut census = hub.census.watch();
    let _ = tokio::time::timeout(FLUSH, census.wait_for(|c| c.session_actors == 0)).await;
    let asked: Vec<_> = hub
        .rooms
        .snapshot("")
        .into_iter()
        .map(|(_, room)| room.send(crate::actors::Inspect { members: false }))
        .collect();
    let deadline = Instant::now() + FLUSH;
    for answer in asked {
        let _ = tokio::time::timeout_at(deadline, answer).await;
    }
}
