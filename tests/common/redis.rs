//! A real `redis-server` for one test: a free loopback port, persistence off, killed by its pid
//! when dropped. `stop()` / `start_again()` (or `restart()`) bring it down and back on the same
//! port, so outage tests can watch the window in between; `pause()` / `resume()` freeze it
//! instead. When `redis-server` is not on PATH, `.ci/install-redis` installs it first (once per
//! test binary), so `cargo test` alone works on a fresh machine.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a started server gets to answer.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between two readiness probes (a poll interval, not a synchronisation sleep).
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Attempts at finding a free port whose server then starts (another process may take the port
/// between our probe bind and redis-server's own bind).
const START_ATTEMPTS: usize = 5;

pub struct RedisServer {
    port: u16,
    /// `None` only between `stop()` and `start_again()`.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh server on a free port and waits until it answers.
    pub fn start() -> RedisServer {
        ensure_installed();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = match free_port() {
                Ok(port) => port,
                Err(error) => {
                    last_error = format!("no free port: {error}");
                    continue;
                }
            };
            match spawn_ready(port) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        child: Some(child),
                    };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (all data is lost: persistence is off) and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again() without stop()");
        // The port was ours a moment ago, but the kernel may briefly refuse to rebind it;
        // redis-server then exits at once, and the next attempt goes.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_ready(self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(error) => last_error = error,
            }
        }
        panic!(
            "redis-server did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): its connections stay open but nothing answers, as with a
    /// hung host or a silent network.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undoes [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// `stop()` then `start_again()`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns redis-server on `port` and waits until it answers; on failure the child is killed and reaped.
/// Runs the project's installer once per test binary if `redis-server` is missing.
fn ensure_installed() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let outcome = INSTALLED.get_or_init(|| {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Ok(());
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-redis");
        match Command::new("bash").arg(script).status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("{script} failed: {status}")),
            Err(error) => Err(format!("cannot run {script}: {error}")),
        }
    });
    if let Err(error) = outcome {
        panic!("redis-server is needed by the cluster tests: {error}");
    }
}

fn spawn_ready(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot run redis-server (is it installed?): {error}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        if answers_as(addr, child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on port {port} did not answer"));
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// True when the server on `addr` answers and is our child (its `process_id`), not some other
/// process that took the port first.
fn answers_as(addr: SocketAddr, pid: u32) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"INFO server\r\n")?;
        let wanted = format!("\nprocess_id:{pid}\r");
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        // An INFO server reply is a few KB; stop at the line we need, or at 64 KB.
        while reply.len() < 64 * 1024 {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&reply).contains(&wanted) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    probe().unwrap_or(false)
}
