//! The gRPC health status the server reports, for the whole server (`""`) and for
//! [`super::CHAT_SERVICE`], and how it follows the cluster store's reachability.

use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use super::CHAT_SERVICE;

/// Cluster mode: NOT_SERVING while Redis cannot be reached (a node without Redis cannot serve
/// its rooms), SERVING again once it can.
pub(super) async fn follow_cluster(
    mut connected: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
) {
    loop {
        let up = *connected.borrow_and_update();
        if up {
            info!("cluster store reachable: health SERVING");
        } else {
            warn!("cluster store unreachable: health NOT_SERVING");
        }
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&health, status).await;
        if connected.changed().await.is_err() {
            return;
        }
    }
}

pub(super) async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(CHAT_SERVICE, status).await;
}
