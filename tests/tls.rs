//! TLS (part of the security work): certificates made in the test with rcgen. A TLS client that
//! trusts the test CA is served; a plaintext client is not; with `client_ca_path`, only clients
//! presenting a certificate from that CA get in. A missing key file stops the binary with exit 2.

mod common;

use chatrooms::proto::Kind;
use common::{
    Client, TestServer,
    tls::{TestCa, tls_server, tls_server_with, write},
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn tls_endpoint(server: &TestServer, ca: &TestCa, identity: Option<Identity>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

#[tokio::test]
async fn a_tls_client_with_the_test_ca_is_served_and_a_plaintext_one_is_not() {
    let ca = TestCa::new("test ca");
    let server = tls_server(&ca, None, "plain").await;

    let channel = tls_endpoint(&server, &ca, None).connect().await.unwrap();
    let mut secure = Client::open(channel, "secure").await;
    secure.join("r").await;
    secure.chat("r", "over tls").await;
    assert_eq!(secure.expect(Kind::Chat).await.content, "over tls");

    // Plaintext HTTP/2 against the TLS port: the stream never opens.
    let plaintext = server.endpoint().connect_lazy();
    assert!(Client::try_open(plaintext, "plain").await.is_err());
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let ca = TestCa::new("server ca");
    let clients = TestCa::new("clients ca");
    let server = tls_server(&ca, Some(&clients), "mutual").await;

    let (cert, key) = clients.leaf(&["alice"]);
    let with_cert = tls_endpoint(&server, &ca, Some(Identity::from_pem(cert, key)));
    let mut alice = Client::open(with_cert.connect().await.unwrap(), "alice").await;
    alice.join("r").await;

    let without_cert = tls_endpoint(&server, &ca, None).connect_lazy();
    assert!(Client::try_open(without_cert, "nobody").await.is_err());

    let stranger_ca = TestCa::new("stranger ca");
    let (cert, key) = stranger_ca.leaf(&["mallory"]);
    let wrong = tls_endpoint(&server, &ca, Some(Identity::from_pem(cert, key))).connect_lazy();
    assert!(Client::try_open(wrong, "mallory").await.is_err());
}

#[tokio::test]
async fn a_socket_that_never_starts_tls_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new("ca");
    let server = tls_server_with(&ca, None, "silent", "handshake_timeout_ms = 300").await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(common::WAIT, silent.read_to_end(&mut got))
        .await
        .expect("closed by the server")
        .ok();
    assert!(got.is_empty());
    // TLS clients are served as before.
    let channel = tls_endpoint(&server, &ca, None).connect().await.unwrap();
    Client::open(channel, "secure").await.join("r").await;
}

#[test]
fn a_missing_key_file_stops_the_binary_with_exit_code_2() {
    let ca = TestCa::new("ca");
    let (cert, _) = ca.leaf(&["localhost"]);
    let cert_path = write("exit2-server.pem", &cert);
    let config = write(
        "exit2.toml",
        &format!(
            "[server.tls]\ncert_path = {:?}\nkey_path = \"/nonexistent/server.key\"\n",
            cert_path.display().to_string()
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatrooms"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.tls.key_path"), "{stderr}");
}
