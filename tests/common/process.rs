//! The real `chatrooms` binary as a child process, for tests that need signals or a hard kill:
//! started on a configuration file, its address read from its log, stopped when dropped.

use std::{path::PathBuf, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::timeout,
};
use tonic::transport::Endpoint;

use super::{Client, WAIT};

pub struct Process {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub addr: String,
    /// The configuration file it was started with (rewrite it, then SIGHUP, to reload).
    pub config: PathBuf,
}

impl Process {
    /// Writes `config` to a file, starts the binary on it and waits until it serves.
    pub async fn start(name: &str, config: &str) -> Process {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("process-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatrooms"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Process {
            child,
            lines,
            addr: String::new(),
            config: path,
        };
        let serving = process.wait_log("serving chat.v1.ChatService").await;
        let addr = serving.split("listen=").nth(1).expect("address logged");
        process.addr = addr.split_whitespace().next().unwrap().to_string();
        process
    }

    /// Waits for a log line containing `needle`.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let found = timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no log line with {needle:?}"),
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::open(self.endpoint().connect().await.unwrap(), user).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
