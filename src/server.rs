//! Assembling and running the server: the actor runtime, the shared [`Hub`], the gRPC services
//! (chat, health, reflection, admin) on the [`transport`], the metrics endpoint, configuration
//! reload, and the shutdown order: health goes NOT_SERVING and new streams are refused, every session ends after its queue
//! drains, then the transport closes; all of it bounded by `shutdown_grace_ms`.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, time::Instant};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{error, info, warn};

use crate::{
    admin::{AdminAuth, AdminEdge, cluster::Operators},
    cluster::{RedisEngine, Timeouts},
    config::{ClusterEngine, Config},
    edge::service::ChatEdge,
    hub::Hub,
    metrics,
    proto::{
        FILE_DESCRIPTOR_SET, admin::admin_service_server::AdminServiceServer,
        chat_service_server::ChatServiceServer,
    },
    runtime::ActorRuntime,
    transport,
};

/// The name health checks use for the chat service.
pub const CHAT_SERVICE: &str = "chat.v1.ChatService";

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
        let chat = ChatServiceServer::new(ChatEdge::new(hub.clone()))
            .max_decoding_message_size(hub.frame_limit());
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
            .add_service(chat)
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
            tls,
        };
        let trimmer = tokio::spawn(crate::trim::keep_trimming());
        let serve = transport::serve(listener, settings, routes, async {
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
        let user_places = hub
            .cluster
            .clone()
            .map(|engine| tokio::spawn(crate::hub::keep_user_places(hub.clone(), engine)));

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

/// The shutdown order. `serve` keeps being polled throughout, so the transport goes on accepting
/// while sessions drain and a new stream gets a clear UNAVAILABLE instead of a hung connect.
async fn shut_down<F>(
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

/// The TLS acceptor of `[server.tls]`: certificate chain and key, the CA that client
/// certificates must chain to when mutual TLS is on, and ALPN `h2`.
fn tls_acceptor(tls: &crate::config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use tokio_rustls::rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    let invalid = |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(&tls.cert_path.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| invalid(&tls.key_path.display().to_string(), &e))?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let ca_certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(&ca.display().to_string(), &e))?;
            roots.add_parsable_certificates(ca_certs);
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| invalid("client_ca_path", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Cluster mode, at shutdown: every session has ended; each room is asked a question that it
/// answers only after the LEAVEs queued before it have reached Redis (a room holds its mail
/// while one is in flight), so the other nodes see this node's members go now, not after the
/// presence TTL. Bounded: a Redis that does not answer leaves it to the TTL.
async fn flush_rooms(hub: &Hub) {
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

/// Cluster mode: NOT_SERVING while Redis cannot be reached (a node without Redis cannot serve
/// its rooms), SERVING again once it can.
async fn follow_cluster(mut connected: tokio::sync::watch::Receiver<bool>, health: HealthReporter) {
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

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(CHAT_SERVICE, status).await;
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while the server starts is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match sigterm {
                Ok(mut sigterm) => {
                    sigterm.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => info!("SIGINT received"),
            () = terminate => info!("SIGTERM received"),
        }
    }
}

/// Re-reads the configuration on every SIGHUP and applies it to `hub`. A file that does not load
/// is logged and ignored: the running configuration stays. The handler is installed when this is
/// called (before serving), so an early SIGHUP does not terminate the process.
#[cfg(unix)]
pub fn reload_on_hangup(hub: Arc<Hub>, path: Option<PathBuf>) -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let hangups = signal(SignalKind::hangup());
    async move {
        let Ok(mut hangups) = hangups else {
            warn!("cannot listen for SIGHUP; configuration reload is off");
            return;
        };
        reload_loop(&mut hangups, &hub, path).await;
    }
}

#[cfg(unix)]
async fn reload_loop(hangups: &mut tokio::signal::unix::Signal, hub: &Hub, path: Option<PathBuf>) {
    while hangups.recv().await.is_some() {
        match Config::load(path.as_deref()) {
            Ok(new) => {
                // Compared before the swap: open sessions keep these, so operators are told.
                let for_new_sessions: Vec<&str> = (hub.config().changed(&new).into_iter())
                    .filter(|key| key.reload == crate::config::Reload::NewSessions)
                    .map(|key| key.name)
                    .collect();
                let restart = hub.reload(new);
                info!("config reloaded");
                for key in for_new_sessions {
                    info!(
                        key,
                        "config change applies to sessions opened from now on; open sessions keep theirs"
                    );
                }
                for key in restart {
                    warn!(key = %key, "config change needs a restart to take effect; the running value stays");
                }
            }
            Err(e) => error!(error = %e, "config reload failed; keeping the running configuration"),
        }
    }
}
