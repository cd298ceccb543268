//! The process signals the server answers: SIGINT and SIGTERM end it ([`shutdown_signal`]),
//! SIGHUP reloads the configuration ([`reload_on_hangup`]). Each handler is installed when its
//! function is called, before serving, so an early signal is neither lost nor fatal.

use std::future::Future;
#[cfg(unix)]
use std::{path::PathBuf, sync::Arc};

use tracing::info;
#[cfg(unix)]
use tracing::{error, warn};

#[cfg(unix)]
use crate::{config::Config, hub::Hub};

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
                let restart = super::apply_reload(hub, new);
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
