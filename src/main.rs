//! The chatrooms server: parse the command line, load the configuration (exit code 2 on any
//! error in it), start logging, bind, and serve until SIGINT or SIGTERM; SIGHUP reloads.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use chatrooms::{
    Config, Server,
    config::{LogConfig, LogFormat},
    shutdown_signal,
};
use clap::Parser;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Chat room server: gRPC bidirectional streams, rooms named in message fields.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Default: config/default.toml if present, else built-in defaults.
    #[arg(long, env = "CHATROOMS_CONFIG")]
    config: Option<PathBuf>,
}

fn init_logging(log: &LogConfig) {
    // RUST_LOG, when set, overrides the configured level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("chatrooms: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    info!(source = config.source(), "config loaded");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(chatrooms::config::ServerConfig::threads(
            config.server.io_threads,
        ))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chatrooms: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Signal handlers first: the default action of SIGTERM/SIGHUP would kill the process.
        let shutdown = shutdown_signal();
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let server = Server::new(listener, config)?;
        #[cfg(unix)]
        tokio::spawn(chatrooms::server::reload_on_hangup(
            server.hub(),
            args.config.clone(),
        ));
        server.serve(shutdown).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatrooms: {error:#}");
            ExitCode::FAILURE
        }
    }
}
