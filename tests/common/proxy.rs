//! A fault-injecting TCP proxy for the client tests: it forwards each connection accepted on
//! 127.0.0.1 to its target, and on command breaks every connection open at that moment —
//! cut (closed both ways), stalled (nothing forwarded, nothing closed), cut in the middle of
//! the next chunk the server sends, or deaf (the server's bytes dropped, the client's still
//! forwarded). Connections opened afterwards are forwarded normally, to the current target.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
    time::timeout,
};

use super::WAIT;

/// What the proxy does with a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Forward,
    /// Close both sides at once.
    Cut,
    /// Stop forwarding either way and keep both sides open (until a later `Cut`).
    Stall,
    /// Forward half of the next chunk from the server, then close both sides.
    CutMidFrame,
    /// Drop everything the server sends; keep forwarding what the client sends.
    DropReplies,
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<watch::Sender<Fault>>>>,
    accepted: watch::Receiver<usize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port (bound before this returns) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let links: Arc<Mutex<Vec<watch::Sender<Fault>>>> = Arc::default();
        let (count, accepted) = watch::channel(0);
        let accept = tokio::spawn({
            let (target, links) = (target.clone(), links.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (fault, faults) = watch::channel(Fault::Forward);
                    links.lock().unwrap().push(fault);
                    count.send_modify(|n| *n += 1);
                    let to = *target.lock().unwrap();
                    tokio::spawn(link(client, to, faults));
                }
            }
        });
        Proxy {
            addr,
            target,
            links,
            accepted,
            accept,
        }
    }

    /// Where connections opened from now on go.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Applies `fault` to every connection open now; it is in force when this returns (bytes
    /// read from then on obey it).
    pub fn inject(&self, fault: Fault) {
        let mut links = self.links.lock().unwrap();
        links.retain(|link| !link.is_closed());
        for link in links.iter() {
            link.send_replace(fault);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits until more than `n` connections have been accepted.
    pub async fn wait_accepted_over(&self, n: usize) {
        timeout(WAIT, self.accepted_over(n))
            .await
            .unwrap_or_else(|_| panic!("no connection beyond {n}"));
    }

    /// Returns once more than `n` connections have been accepted (unbounded: the caller
    /// bounds it, e.g. to assert that none comes).
    pub async fn accepted_over(&self, n: usize) {
        let mut accepted = self.accepted.clone();
        // unwrap: the sender lives in the accept task, aborted only when the proxy drops.
        accepted.wait_for(|count| *count > n).await.unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.inject(Fault::Cut);
    }
}

async fn link(client: TcpStream, target: SocketAddr, faults: watch::Receiver<Fault>) {
    // A target that is down: the client's connection closes, as it would at the target.
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    // Either direction ending ends both: dropping the halves closes the sockets.
    tokio::select! {
        _ = pump(client_rx, server_tx, faults.clone(), false) => {}
        _ = pump(server_rx, client_tx, faults, true) => {}
    }
}

/// Copies `from` to `to` under the current fault; `replies`: this is the server → client side.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    replies: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Cut => return,
            Fault::Stall => {
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // The fault in force when the bytes arrived decides their fate.
        let fault = *faults.borrow();
        let forward = match fault {
            Fault::Forward => &buf[..n],
            Fault::DropReplies if replies => continue,
            Fault::DropReplies => &buf[..n],
            Fault::CutMidFrame if replies => {
                let _ = to.write_all(&buf[..n / 2]).await;
                return;
            }
            Fault::CutMidFrame => &buf[..n],
            // Stalled or cut meanwhile: these bytes are never delivered.
            Fault::Stall | Fault::Cut => continue,
        };
        if to.write_all(forward).await.is_err() {
            return;
        }
    }
}
