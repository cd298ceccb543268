//! Accepting connections without spinning: an accept that fails for want of descriptors or
//! memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off, doubling from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`], and is logged once per [`LOG_EVERY`] with the count of failures since; an
//! error about one connection (reset or aborted before it was accepted) is skipped at once.
//! Also raises the process's descriptor limit to its hard limit at start, and counts open
//! connections per client IP ([`PerIp`]) so one address cannot take every connection place.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Something connections can be accepted from: the TCP listener, or a fake in tests.
pub trait Accept {
    type Io;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// Wraps an [`Accept`] with the back-off and the rate-limited log.
pub struct Acceptor<A> {
    inner: A,
    backoff: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

impl<A: Accept> Acceptor<A> {
    pub fn new(inner: A) -> Acceptor<A> {
        Acceptor {
            inner,
            backoff: BACKOFF_MIN,
            failures: 0,
            last_log: None,
        }
    }

    /// The next connection. Only errors that say the listener itself is broken are returned.
    pub async fn next(&mut self) -> io::Result<(A::Io, SocketAddr)> {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        info!(
                            failures = self.failures,
                            "accepting connections again after running out of resources"
                        );
                    }
                    self.backoff = BACKOFF_MIN;
                    self.failures = 0;
                    self.last_log = None;
                    return Ok(accepted);
                }
                Err(error) if is_per_connection(&error) => continue,
                Err(error) if is_exhaustion(&error) => {
                    self.failures += 1;
                    let now = Instant::now();
                    if self.last_log.is_none_or(|at| now - at >= LOG_EVERY) {
                        warn!(
                            %error,
                            failures = self.failures,
                            "cannot accept connections (out of descriptors or memory): backing off; lower server.max_connections or raise the descriptor limit"
                        );
                        self.last_log = Some(now);
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Open connections per client IP, capped at `max` (0 = no cap). A connection over the cap is
/// closed as soon as it is accepted: it would otherwise hold a connection place (and, before
/// its preface, a handshake timer) that other clients are waiting for.
#[derive(Debug, Clone)]
pub struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub fn admit(&self, ip: IpAddr) -> Option<IpConnection> {
        // unwrap: the lock is only held for map updates, which do not panic.
        let mut open = self.open.lock().unwrap();
        let count = open.entry(ip).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpConnection {
            open: self.open.clone(),
            ip,
        })
    }
}

/// One open connection of an IP; given back on drop.
#[derive(Debug)]
pub struct IpConnection {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The peer gave up before it was accepted: nothing to do about it, and nothing to wait for.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The process or the system is out of something accepting needs; it comes back when
/// connections close, so wait rather than fail.
fn is_exhaustion(error: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
    ) || error.kind() == io::ErrorKind::OutOfMemory
}

/// Raises the soft limit of open descriptors to the hard limit and returns the limit in force
/// (`None` where it cannot be read).
pub fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    /// Fails with EMFILE `failing` times, then accepts.
    struct Exhausted {
        failing: usize,
        calls: Arc<AtomicUsize>,
    }

    impl Accept for Exhausted {
        type Io = ();
        async fn accept(&mut self) -> io::Result<((), SocketAddr)> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            if call < self.failing {
                Err(io::Error::from_raw_os_error(24))
            } else {
                Ok(((), SocketAddr::from(([127, 0, 0, 1], 1))))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_backs_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut acceptor = Acceptor::new(Exhausted {
            failing: usize::MAX,
            calls: calls.clone(),
        });
        let waited = tokio::time::timeout(Duration::from_secs(20), acceptor.next()).await;
        assert!(waited.is_err(), "nothing to accept");
        // 5 ms doubling to 1 s: 8 tries reach 1 s, then one a second.
        let tries = calls.load(Ordering::Relaxed);
        assert!((20..=30).contains(&tries), "{tries} accept calls in 20 s");
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_again_resets_the_backoff() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut acceptor = Acceptor::new(Exhausted {
            failing: 10,
            calls: calls.clone(),
        });
        acceptor.next().await.unwrap();
        assert_eq!(acceptor.backoff, BACKOFF_MIN);
        assert_eq!(acceptor.failures, 0);
    }

    #[test]
    fn connections_per_ip_are_capped_and_given_back() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = per_ip.admit(ip).unwrap();
        let _b = per_ip.admit(ip).unwrap();
        assert!(per_ip.admit(ip).is_none());
        assert!(per_ip.admit([10, 0, 0, 2].into()).is_some(), "per IP");
        drop(a);
        assert!(per_ip.admit(ip).is_some());
        drop(_b);
        assert!(per_ip.open.lock().unwrap().len() <= 1, "emptied entries go");
        assert!(PerIp::new(0).admit(ip).is_some(), "0 = no cap");
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let limit = raise_descriptor_limit().expect("readable on unix");
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(limit, now.rlim_cur);
    }
}
