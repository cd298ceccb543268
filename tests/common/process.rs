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
        Process::start_limited(name, config, None).await
    }

    /// [`Process::start`], with the child's descriptor limit (soft and hard) set to `nofile`.
    pub async fn start_limited(name: &str, config: &str, nofile: Option<u64>) -> Process {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("process-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatrooms"));
        command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(nofile) = nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: nofile as libc::rlim_t,
            };
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().unwrap();
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

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> std::time::Duration {
        let pid = self.child.id().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) start at `state`, field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        std::time::Duration::from_millis(ticks * 1000 / per_sec)
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
