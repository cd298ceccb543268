//! `chat-client`: an interactive (or scripted) client on the client library
//! ([`chatrooms::client`]). Lines from stdin are posted to the current room; `/join R`,
//! `/leave R`, `/room R` and `/quit` steer it. Incoming messages are printed as
//! `[room] user: content`. It reconnects by itself and says so in plain words; at end of input
//! it finishes what it sent, prints what is still coming, and exits. A line it will not send
//! (longer than the library's content limit) is one `! not sent: …` line on stderr, and the
//! next lines go on. Errors it cannot recover from are one line on stderr and exit code 1.

use std::{convert::Infallible, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use chatrooms::client::{Client, ClientError, ClientOptions, Event, Events};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Certificate, ClientTlsConfig};

/// Chat from the terminal or a script.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address: host:port, http://host:port or https://host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    server: String,
    /// Your name in the rooms.
    #[arg(long)]
    user: String,
    /// Room to join and post to at start (default: the server's default room).
    #[arg(long)]
    room: Option<String>,
    /// Seconds between heartbeats (PING), well under the server's idle timeout.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Bearer token for a server in jwt mode.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (implies TLS).
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Debug, PartialEq)]
enum Command {
    Say(String),
    Join(String),
    Leave(String),
    Room(String),
    Quit,
    Nothing,
    Unknown(String),
}

fn parse_line(line: &str) -> Command {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(rest) = line.strip_prefix('/') else {
        return if line.trim().is_empty() {
            Command::Nothing
        } else {
            Command::Say(line.to_string())
        };
    };
    let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    let arg = arg.trim().to_string();
    match (verb, arg.is_empty()) {
        ("quit", _) => Command::Quit,
        ("join", false) => Command::Join(arg),
        ("leave", false) => Command::Leave(arg),
        ("room", false) => Command::Room(arg),
        _ => Command::Unknown(line.to_string()),
    }
}

/// The line printed for `event`, if any.
fn render(event: &Event) -> Option<String> {
    let line = match event {
        Event::Message(m) => {
            let replay = if m.replay { " (earlier)" } else { "" };
            format!("[{}] {}: {}{replay}", m.room, m.user, m.content)
        }
        Event::MemberJoined { room, user } => format!("* {user} joined {room}"),
        Event::MemberLeft { room, user } => format!("* {user} left {room}"),
        Event::Joined(joined) => format!(
            "* you joined {} ({} here: {})",
            joined.room,
            joined.members.len(),
            joined.members.join(", ")
        ),
        Event::Left { room, reason } if reason.is_empty() => format!("* you left {room}"),
        Event::Left { room, reason } => format!("* you left {room}: {reason}"),
        Event::Error(e) => format!("! {} ({}): {}", e.code, e.room, e.reason),
        Event::Reconnecting {
            attempt,
            delay,
            reason,
        } => format!(
            "* reconnecting… (attempt {attempt} in {} ms; {reason})",
            delay.as_millis()
        ),
        Event::Resumed {
            room,
            replayed,
            truncated,
        } => {
            let plural = if *replayed == 1 { "" } else { "s" };
            let mut line = format!("* back, {replayed} missed message{plural} replayed ({room})");
            if *truncated {
                line.push_str(&format!(
                    "\n* some messages are no longer available ({room})"
                ));
            }
            line
        }
        Event::Connected | Event::Closed(_) => return None,
    };
    Some(line)
}

/// Prints every event until the client stops; the error it stopped with, if any.
async fn print(mut events: Events) -> Result<(), ClientError> {
    while let Some(event) = events.next().await {
        if let Some(line) = render(&event) {
            println!("{line}");
        }
        if let Event::Closed(error) = event {
            return error.map_or(Ok(()), Err);
        }
    }
    Ok(())
}

fn options(args: &Args) -> anyhow::Result<ClientOptions> {
    let heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
    let mut options = ClientOptions::new(&args.server, &args.user)
        .heartbeat(heartbeat, heartbeat.min(Duration::from_secs(10)));
    if let Some(token) = args.token.clone() {
        // A fixed token: when it expires, the one refresh gets it again and is refused.
        options = options.token(move || {
            let token = token.clone();
            async move { Ok::<_, Infallible>(token) }
        });
    }
    if let Some(path) = &args.ca {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        options = options.tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
    }
    Ok(options)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (client, events) = Client::connect(options(&args)?).await?;
    let mut printer = tokio::spawn(print(events));
    let mut room = args.room.unwrap_or_default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut first = (!room.is_empty()).then(|| Command::Join(room.clone()));
    // Replies are not awaited here: their outcome is printed from the events (an ERROR whose
    // reply nobody awaits becomes one), so a line typed while reconnecting never blocks input.
    loop {
        let command = match first.take() {
            Some(command) => command,
            None => {
                let line = tokio::select! {
                    line = lines.next_line() => line.context("reading stdin")?,
                    stopped = &mut printer => return Ok(stopped.context("printer task")??),
                };
                let Some(line) = line else { break };
                parse_line(&line)
            }
        };
        let sent = match command {
            Command::Quit => break,
            Command::Nothing => Ok(()),
            Command::Say(text) => client.send_post(&room, text).await.map(drop),
            Command::Join(r) => {
                room = r;
                client.send_join(&room).await.map(drop)
            }
            Command::Leave(r) => client.send_leave(&r).await.map(drop),
            Command::Room(r) => {
                room = r;
                println!("* now posting to {room}");
                Ok(())
            }
            Command::Unknown(l) => {
                eprintln!("unknown command {l:?}: /join R, /leave R, /room R, /quit");
                Ok(())
            }
        };
        match sent {
            Ok(()) => {}
            // The client stopped: the printer says why.
            Err(ClientError::Closed) => break,
            // Refused before it was sent (too long): that line only.
            Err(error) => eprintln!("! not sent: {error}"),
        }
    }
    // Delivers what was sent, half-closes, and prints what is still coming.
    client.close().await;
    Ok(printer.await.context("printer task")??)
}

/// `error` and its causes on one line.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace(['\n', '\r'], " ")
}

fn main() -> ExitCode {
    // A bug must not greet the user with a backtrace either (RUST_BACKTRACE=1 is common).
    std::panic::set_hook(Box::new(|info| {
        let what = info.to_string().replace(['\n', '\r'], " ");
        eprintln!("chat-client: internal error: {what}");
    }));
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-client: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    // `main` returning `Result` would print the error's Debug form (with a backtrace under
    // RUST_BACKTRACE=1): one line instead.
    let outcome = runtime.block_on(run(args));
    // A blocking read of stdin may still be in progress: do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-client: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use chatrooms::client::{ChatMessage, ServerError};

    use super::*;

    #[test]
    fn commands_and_text() {
        assert_eq!(
            parse_line("hello there\n"),
            Command::Say("hello there".into())
        );
        assert_eq!(parse_line("/join general"), Command::Join("general".into()));
        assert_eq!(
            parse_line("/leave  general "),
            Command::Leave("general".into())
        );
        assert_eq!(parse_line("/room r2"), Command::Room("r2".into()));
        assert_eq!(parse_line("/quit"), Command::Quit);
        assert_eq!(parse_line("   "), Command::Nothing);
        assert_eq!(parse_line("/join"), Command::Unknown("/join".into()));
        assert_eq!(parse_line("/dance"), Command::Unknown("/dance".into()));
    }

    #[test]
    fn rendering() {
        let chat = Event::Message(ChatMessage {
            room: "r".into(),
            user: "ada".into(),
            content: "hi".into(),
            id: String::new(),
            seq: 1,
            epoch: String::new(),
            timestamp: 0,
            replay: false,
        });
        assert_eq!(render(&chat).unwrap(), "[r] ada: hi");
        let error = Event::Error(ServerError {
            room: "r".into(),
            code: "room_full".into(),
            reason: "room is full".into(),
        });
        assert_eq!(render(&error).unwrap(), "! room_full (r): room is full");
        assert!(render(&Event::Connected).is_none());
        let back = |replayed, truncated| Event::Resumed {
            room: "r".into(),
            replayed,
            truncated,
        };
        assert_eq!(
            render(&back(2, false)).unwrap(),
            "* back, 2 missed messages replayed (r)"
        );
        assert_eq!(
            render(&back(1, true)).unwrap(),
            "* back, 1 missed message replayed (r)\n* some messages are no longer available (r)"
        );
        let away = Event::Reconnecting {
            attempt: 2,
            delay: Duration::from_millis(150),
            reason: "UNAVAILABLE: server shutting down".into(),
        };
        assert_eq!(
            render(&away).unwrap(),
            "* reconnecting… (attempt 2 in 150 ms; UNAVAILABLE: server shutting down)"
        );
    }
}
