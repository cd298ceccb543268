//! The chatrooms server: parse the command line, load the configuration (exit code 2 on any
//! error in it), start logging, bind, and serve until SIGINT or SIGTERM.

use std::{path::PathBuf, process::ExitCode};

use chatrooms::{Config, Server, shutdown_signal};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Chat room server: gRPC bidirectional streams, rooms named in message fields.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Default: config/default.toml if present, else built-in defaults.
    #[arg(long, env = "CHATROOMS_CONFIG")]
    config: Option<PathBuf>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        Server::new(listener, config)?
            .serve(shutdown_signal())
            .await?;
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
