//! `chat-client`: an interactive (or scripted) client. Lines from stdin are posted to the current
//! room; `/join R`, `/leave R`, `/room R` and `/quit` steer it. Incoming messages are printed as
//! `[room] user: content`. At end of input it half-closes and prints what is still coming, like
//! the original design's client.

use std::time::Duration;

use anyhow::Context as _;
use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use clap::Parser;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

/// Chat from the terminal or a script.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
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

fn render(m: &Message) -> Option<String> {
    let line = match m.kind() {
        Kind::Chat | Kind::Unspecified => {
            let replay = if m.replay { " (earlier)" } else { "" };
            format!("[{}] {}: {}{replay}", m.room, m.user, m.content)
        }
        Kind::Join => format!("* {} joined {}", m.user, m.room),
        Kind::Leave => format!("* {} left {}", m.user, m.room),
        Kind::Joined => format!(
            "* you joined {} ({} here: {})",
            m.room,
            m.members.len(),
            m.members.join(", ")
        ),
        Kind::Left => format!("* you left {}", m.room),
        Kind::Error => format!("! {} ({}): {}", m.code, m.room, m.content),
        Kind::Pong | Kind::Ping => return None,
    };
    Some(line)
}

fn request(kind: Kind, user: &str, room: &str, content: String) -> Message {
    Message {
        kind: kind.into(),
        user: user.to_string(),
        room: room.to_string(),
        content,
        ..Message::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = ChatServiceClient::connect(args.server.clone())
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    let (tx, rx) = mpsc::channel(64);
    let mut replies = client
        .chat_stream(ReceiverStream::new(rx))
        .await
        .context("cannot open the chat stream")?
        .into_inner();
    let mut printer = tokio::spawn(async move {
        while let Some(message) = replies.message().await? {
            if let Some(line) = render(&message) {
                println!("{line}");
            }
        }
        Ok::<_, tonic::Status>(())
    });

    let user = args.user;
    let mut room = args.room.unwrap_or_default();
    let send = |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).await.is_ok() }
    };
    if !room.is_empty() {
        send(request(Kind::Join, &user, &room, String::new())).await;
    } else {
        // Names the session at once, so the first line typed is not the first request.
        send(request(Kind::Ping, &user, "", String::new())).await;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(args.heartbeat_secs.max(1)));
    heartbeat.tick().await;
    let mut ended_early = None;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading stdin")?,
            _ = heartbeat.tick() => {
                send(request(Kind::Ping, &user, "", String::new())).await;
                continue;
            }
            ended = &mut printer => {
                ended_early = Some(ended);
                break;
            }
        };
        let Some(line) = line else { break };
        let sent = match parse_line(&line) {
            Command::Quit => break,
            Command::Nothing => true,
            Command::Say(text) => send(request(Kind::Chat, &user, &room, text)).await,
            Command::Join(r) => {
                room = r;
                send(request(Kind::Join, &user, &room, String::new())).await
            }
            Command::Leave(r) => send(request(Kind::Leave, &user, &r, String::new())).await,
            Command::Room(r) => {
                room = r;
                println!("* now posting to {room}");
                true
            }
            Command::Unknown(l) => {
                eprintln!("unknown command {l:?}: /join R, /leave R, /room R, /quit");
                true
            }
        };
        if !sent {
            break;
        }
    }
    drop(tx); // CloseSend: the server delivers what is queued, then ends the stream.
    let ended = match ended_early {
        Some(ended) => ended,
        None => printer.await,
    };
    match ended.context("printer task")? {
        Ok(()) => Ok(()),
        Err(status) => anyhow::bail!("stream ended: {:?}: {}", status.code(), status.message()),
    }
}

#[cfg(test)]
mod tests {
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
        let chat = Message {
            kind: Kind::Chat.into(),
            room: "r".into(),
            user: "ada".into(),
            content: "hi".into(),
            ..Message::default()
        };
        assert_eq!(render(&chat).unwrap(), "[r] ada: hi");
        let error = Message {
            kind: Kind::Error.into(),
            room: "r".into(),
            code: "room_full".into(),
            content: "room is full".into(),
            ..Message::default()
        };
        assert_eq!(render(&error).unwrap(), "! room_full (r): room is full");
        let pong = Message {
            kind: Kind::Pong.into(),
            ..Message::default()
        };
        assert!(render(&pong).is_none());
    }
}
