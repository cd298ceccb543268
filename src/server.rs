//! Assembling and running the server: the actor runtime, the shared [`Hub`], the tonic transport
//! and the shutdown order (refuse new streams, end every session after its queue drains, wait at
//! most the grace period, then stop the actors).

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::{
    config::Config, hub::Hub, proto::chat_service_server::ChatServiceServer, runtime::ActorRuntime,
    service::ChatEdge,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the actor runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A server bound to a listener, not yet serving. Tests keep [`Server::hub`] to look inside.
pub struct Server {
    listener: TcpListener,
    hub: Arc<Hub>,
    runtime: ActorRuntime,
}

impl Server {
    pub fn new(listener: TcpListener, config: Config) -> Result<Server, ServerError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = ActorRuntime::start(threads)?;
        let hub = Arc::new(Hub::new(config, runtime.arbiters()));
        Ok(Server {
            listener,
            hub,
            runtime,
        })
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server {
            listener,
            hub,
            mut runtime,
        } = self;
        let config = hub.config.clone();
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let chat = ChatServiceServer::new(ChatEdge::new(hub.clone()))
            .max_decoding_message_size(config.max_frame_bytes());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        info!(listen = %listener.local_addr()?, "serving chat.v1.ChatService");
        let serve = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(chat)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            });
        tokio::pin!(serve);
        let result = tokio::select! {
            result = &mut serve => result,
            () = shutdown => {
                info!(sessions = hub.sessions.len(), "shutdown: ending sessions after their queues drain");
                hub.sessions.shut_down();
                let _ = stop_tx.send(());
                match tokio::time::timeout(grace, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        warn!(grace_ms = config.server.shutdown_grace_ms, "shutdown: grace period over, cutting the remaining streams");
                        Ok(())
                    }
                }
            }
        };
        // Joining the actor threads blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || runtime.stop()).await;
        info!("shutdown: done");
        result.map_err(ServerError::from)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
