//! The transport as a whole: where a connection's handshake runs, keepalive.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpStream, sync::oneshot};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    },
};

use super::*;

/// A direct route that claims nothing: every request goes to the router.
#[derive(Clone)]
struct Nothing;

impl DirectRoute for Nothing {
    type Body = Body;

    fn claims(&self, _path: &str) -> bool {
        false
    }

    fn call(&self, _request: Request<Body>) -> impl Future<Output = Response<Body>> + 'static {
        std::future::ready(Response::new(Body::empty()))
    }
}

fn settings(tls: Option<TlsAcceptor>, threads: Option<crate::runtime::Arbiters>) -> Settings {
    Settings {
        max_connections: 16,
        max_connections_per_ip: 0,
        handshake_timeout: Duration::from_secs(5),
        tcp_nodelay: true,
        keepalive_interval: None,
        keepalive_timeout: Duration::from_secs(5),
        max_concurrent_streams: 16,
        stream_send_buffer: 64 * 1024,
        frames: FrameLimits::new(64 * 1024, 64 * 1024),
        tls,
        threads,
    }
}

/// A transport serving on a loopback port of its own until stopped.
struct Served {
    address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(settings: Settings) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            settings,
            Routes::default(),
            Nothing,
            async {
                let _ = stopped.await;
            },
        ));
        Served {
            address,
            stop,
            task,
        }
    }

    /// Stops accepting, asks every connection to finish, and waits (bounded) for the server.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}

/// A request the transport answers itself (not gRPC: 405), on a new h2 client connection.
async fn refused_get<IO>(io: IO, port: u16) -> StatusCode
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut h2, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://localhost:{port}/"))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    response.await.unwrap().status()
}

/// A server and a client TLS configuration for `localhost`, with a self-signed certificate.
fn tls() -> (TlsAcceptor, TlsConnector) {
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = CertificateDer::from(signed.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signed.signing_key.serialize_der()));
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    (
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_runs_off_the_actor_thread_that_then_serves_the_connection() {
    let runtime = crate::runtime::ActorRuntime::start(1).unwrap();
    let arbiters = runtime.arbiters();
    let (acceptor, connector) = tls();
    let settings = settings(Some(acceptor), Some(arbiters.clone()));
    let server = Served::start(settings).await;
    let address = server.address;

    // The only actor thread is busy (as with a long fan-out) until released, at most 10 s.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (busy_tx, busy_rx) = oneshot::channel();
    arbiters.next().spawn(async move {
        let _ = busy_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
    });
    busy_rx.await.unwrap();

    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("the handshake does not wait for the actor thread")
        .unwrap();
    release_tx.send(()).unwrap();

    // Served, once moved: a request the transport answers itself (not gRPC: 405).
    let status = tokio::time::timeout(Duration::from_secs(5), refused_get(tls, address.port()))
        .await
        .expect("served after the move");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
    drop(runtime);
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_closed_and_one_that_does_is_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut settings = settings(None, None);
    settings.keepalive_interval = Some(Duration::from_millis(100));
    settings.keepalive_timeout = Duration::from_millis(100);
    let server = Served::start(settings).await;
    let address = server.address;

    // Speaks the preface and an empty SETTINGS frame, then never answers anything.
    let mut deaf = TcpStream::connect(address).await.unwrap();
    deaf.write_all(handshake::PREFACE).await.unwrap();
    deaf.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut received = Vec::new();
    let read = deaf.read_to_end(&mut received);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("closed by the keepalive")
        .unwrap();
    // Among what it was sent: a PING (frame type 6) that it never answered.
    let mut frames = &received[..];
    let mut pinged = false;
    while frames.len() >= 9 {
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        pinged |= frames[3] == 6 && frames[4] & 1 == 0;
        frames = &frames[(9 + len).min(frames.len())..];
    }
    assert!(pinged, "pinged before it was closed");

    // A client that answers (h2 does) stays connected across many intervals.
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = tokio::spawn(connection);
    let kept = tokio::time::timeout(Duration::from_millis(800), &mut connection).await;
    assert!(kept.is_err(), "the connection ended: {kept:?}");
    let request = http::Request::get(format!("http://localhost:{}/", address.port()))
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    drop(h2);
    server.stop().await;
}

/// Reads one HTTP/2 frame: (type, flags, payload); `None` at EOF.
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_that_arrived_in_time_while_the_thread_was_busy_keeps_the_connection() {
    use tokio::io::AsyncWriteExt;
    let runtime = crate::runtime::ActorRuntime::start(1).unwrap();
    let arbiters = runtime.arbiters();
    let mut settings = settings(None, Some(arbiters.clone()));
    settings.keepalive_interval = Some(Duration::from_millis(200));
    settings.keepalive_timeout = Duration::from_millis(300);
    let server = Served::start(settings).await;
    let address = server.address;

    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(handshake::PREFACE).await.unwrap();
    client
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let first = async {
        loop {
            match read_frame(&mut client).await.expect("open") {
                // The server's SETTINGS: acknowledged.
                (4, 0, _) => client
                    .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .unwrap(),
                (6, 0, payload) => return payload,
                _ => {}
            }
        }
    };
    let ping = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("pinged");

    // The connection's thread is busy (as with a long fan-out) for longer than the keepalive
    // timeout, while the PONG reaches the server's socket at once.
    let (busy_tx, busy_rx) = oneshot::channel();
    arbiters.next().spawn(async move {
        let _ = busy_tx.send(());
        let until = std::time::Instant::now() + Duration::from_millis(900);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    });
    busy_rx.await.unwrap();
    let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
    pong.extend_from_slice(&ping);
    client.write_all(&pong).await.unwrap();

    // Once the thread is free: the next PING, not a GOAWAY or the end of the connection.
    let next = async {
        loop {
            match read_frame(&mut client).await {
                None => return "closed",
                Some((7, _, _)) => return "GOAWAY",
                Some((6, 0, _)) => return "pinged",
                Some(_) => {}
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("an outcome");
    assert_eq!(
        outcome, "pinged",
        "the PONG was in the socket before the deadline"
    );
    drop(client);
    server.stop().await;
    drop(runtime);
}
