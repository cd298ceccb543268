//! Assembling and running the server: the actor runtime, the shared [`Hub`], the gRPC services
//! (chat, health, reflection, admin) on the [`transport`], the metrics endpoint and the
//! background tasks, and what is stopped in which order once serving ends.
//!
//! Layout: this file builds the [`Server`] and runs it ([`Server::serve`]); `shutdown` holds the
//! drain order (health NOT_SERVING and new streams refused, every session ends after its queue
//! drains, then the transport closes; all of it bounded by `shutdown_grace_ms`), `health` the
//! health status and how it follows the cluster store, `tls` the acceptor of `[server.tls]`,
//! `signals` the process signals: [`shutdown_signal`] and the SIGHUP reload, which `reload`
//! applies ([`apply_reload`]).

mod health;
mod reload;
mod shutdown;
mod signals;
mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot};
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub use self::reload::apply_reload;
#[cfg(unix)]
pub use self::signals::reload_on_hangup;
pub use self::signals::shutdown_signal;
use self::{
    health::{follow_cluster, set_health},
    shutdown::{flush_rooms, shut_down},
    tls::tls_acceptor,
};
use crate::{
    admin::{AdminAuth, AdminEdge, cluster::Operators},
    cluster::{RedisEngine, Timeouts},
    config::{ClusterEngine, Config},
    edge::{route::ChatRoute, service::ChatEdge},
    hub::Hub,
    metrics,
    proto::{FILE_DESCRIPTOR_SET, admin::admin_service_server::AdminServiceServer},
    runtime::ActorRuntime,
    transport,
};

/// The name health checks use for the chat service.
pub const CHAT_SERVICE: &str = "chat.v1.ChatService";

/// Why the server could not start: a listener, the TLS files, reflection or the cluster settings.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::InvalidCluster),
}

/// A server bound to its listeners, not yet serving. Tests keep [`Server::hub`] to look inside.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    hub: Arc<Hub>,
    runtime: ActorRuntime,
}

impl Server {
    /// Starts the actor runtime and binds the metrics endpoint (if configured). Must be called
    /// inside a tokio runtime.
    pub fn new(listener: TcpListener, config: Config) -> Result<Server, ServerError> {
        metrics::install();
        // The unlabelled series (history bytes among them) exist at 0 from start-up, not from
        // the first traffic that touches them.
        let _ = metrics::get();
        let metrics_listener = match config.metrics.addr() {
            Some(addr) => {
                let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} for metrics: {e}"),
                    )
                })?;
                std_listener.set_nonblocking(true)?;
                Some(TcpListener::from_std(std_listener)?)
            }
            None => None,
        };
        let cluster = match config.cluster.engine {
            ClusterEngine::Memory => None,
            ClusterEngine::Redis => {
                let node_id = match config.cluster.node_id.as_str() {
                    "" => uuid::Uuid::now_v7().to_string(),
                    id => id.to_string(),
                };
                info!(
                    node_id,
                    shards = config.cluster.redis_urls.len(),
                    "cluster mode: rooms shared through redis"
                );
                let engine =
                    RedisEngine::new(&config.cluster.redis_urls, node_id, Timeouts::default())?;
                engine.set_retention(Duration::from_secs(config.cluster.retention_secs));
                Some(engine)
            }
        };
        let threads = crate::config::ServerConfig::threads(config.server.actor_threads);
        let runtime = ActorRuntime::start(threads)?;
        let hub = Arc::new(Hub::new(config, runtime.arbiters(), cluster));
        Ok(Server {
            listener,
            metrics_listener,
            hub,
            runtime,
        })
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server {
            listener,
            metrics_listener,
            hub,
            mut runtime,
        } = self;
        let config = hub.config().clone();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let chat = ChatRoute::new(ChatEdge::new(hub.clone()), hub.frame_limit());
        let metrics_task = metrics_listener.map(|l| {
            info!(listen = %l.local_addr().map_or("?".into(), |a| a.to_string()), "serving /metrics");
            tokio::spawn(metrics::serve(l, metrics::install()))
        });

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let tls = match &config.server.tls {
            Some(tls) => Some(tls_acceptor(tls)?),
            None => None,
        };
        info!(listen = %listener.local_addr()?, tls = config.server.tls.is_some(), "serving {CHAT_SERVICE}");
        let exposed = !listener.local_addr()?.ip().is_loopback();
        if !config.admin.token.is_empty() && config.server.tls.is_none() && exposed {
            warn!(
                "the admin API is on without TLS on a non-loopback address: its token travels in cleartext; set [server.tls]"
            );
        }
        // Cluster mode: this node also carries out operator actions called on other nodes.
        let (operators, operator_task) = match &hub.cluster {
            Some(engine) => {
                let (operators, task) = Operators::start(hub.clone(), engine.clone());
                (Some(operators), Some(task))
            }
            None => (None, None),
        };
        let admin = AdminServiceServer::with_interceptor(
            AdminEdge::new(hub.clone(), operators),
            AdminAuth::new(hub.clone()),
        );
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection)
            .add_service(admin);
        let settings = transport::Settings {
            max_connections: connection_cap(config.server.max_connections),
            max_connections_per_ip: config.server.max_connections_per_ip,
            handshake_timeout: Duration::from_millis(config.server.handshake_timeout_ms),
            tcp_nodelay: config.server.tcp_nodelay,
            keepalive_interval: config.server.keepalive_interval(),
            keepalive_timeout: Duration::from_millis(config.server.keepalive_timeout_ms),
            max_concurrent_streams: config.server.max_concurrent_streams,
            stream_send_buffer: config.session.stream_send_buffer(),
            frames: transport::rechunk::FrameLimits::new(
                hub.frame_limit(),
                config.largest_request_bytes(),
            ),
            tls,
            threads: Some(hub.arbiters.clone()),
        };
        let trimmer = tokio::spawn(crate::trim::keep_trimming());
        let packer = tokio::spawn(hub.packer.clone().keep_packing());
        let metrics_upkeep = tokio::spawn(metrics::keep_up(metrics::install()));
        let serve = transport::serve(listener, settings, routes, chat, async {
            let _ = stop_rx.await;
        });
        tokio::pin!(serve);
        // Cluster mode starts NOT_SERVING until Redis answers (`follow_cluster` takes over).
        let ready = hub.cluster.as_ref().is_none_or(|e| *e.connected().borrow());
        let initial = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&health, initial).await;
        let cluster_health = hub
            .cluster
            .as_ref()
            .map(|engine| tokio::spawn(follow_cluster(engine.connected(), health.clone())));
        let user_places = hub.cluster.clone().map(|engine| {
            let (abuse, config) = (hub.abuse.clone(), hub.config.clone());
            tokio::spawn(crate::edge::abuse::keep_user_places(abuse, config, engine))
        });

        let result = tokio::select! {
            result = &mut serve => result,
            () = shutdown => {
                // From here on health only goes NOT_SERVING.
                if let Some(task) = &cluster_health {
                    task.abort();
                }
                shut_down(&hub, &health, serve, stop_tx).await
            }
        };
        for task in cluster_health
            .into_iter()
            .chain(operator_task)
            .chain(user_places)
        {
            task.abort();
        }
        if hub.cluster.is_some() {
            flush_rooms(&hub).await;
            hub.abuse.places_released(Duration::from_secs(2)).await;
        }
        if let Some(task) = metrics_task {
            task.abort();
        }
        trimmer.abort();
        packer.abort();
        metrics_upkeep.abort();
        // Joining the actor threads blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || runtime.stop()).await;
        info!("shutdown: done");
        result.map_err(ServerError::from)
    }
}

/// `server.max_connections`, lowered to leave room under the descriptor limit (raised to its
/// hard limit here) for everything else the server opens: listeners, Redis, metrics, files.
fn connection_cap(configured: usize) -> usize {
    const RESERVED: u64 = 256;
    let Some(limit) = transport::accept::raise_descriptor_limit() else {
        return configured;
    };
    let fits = limit
        .saturating_sub(RESERVED)
        .max(RESERVED.min(limit / 2))
        .max(1);
    if configured as u64 > fits {
        warn!(
            max_connections = configured,
            descriptor_limit = limit,
            lowered_to = fits,
            "server.max_connections does not fit under the descriptor limit: lowered"
        );
        return fits as usize;
    }
    configured
}
