//! The client library's security surface: a token from the callback, refreshed once when the
//! server says it expired (and the rooms resumed), a refused fresh token ending the client with
//! a clear error, TLS with the server's CA (and refused without it), and an operator's kick
//! (PERMISSION_DENIED) ending the client without a retry.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use chatrooms::{
    client::{Client, ClientError, Event},
    proto::admin::{KickMode, KickRequest, kick_request::Target},
};
use common::{
    TestServer,
    admin::{TOKEN, admin},
    recorder::{Recorder, fast},
    tls::{TestCa, tls_server},
};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig},
};

const SECRET: &str = "test-secret-of-enough-length";
const JWT: &str = "[auth]\nmode = \"jwt\"\nsecret = \"test-secret-of-enough-length\"\n";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

fn token(sub: &str, valid_secs: u64, secret: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let claims = Claims {
        sub,
        exp: now.as_secs() + valid_secs,
    };
    let key = EncodingKey::from_secret(secret.as_bytes());
    encode(&Header::default(), &claims, &key).unwrap()
}

/// A token callback handing out `tokens` in turn (the last one again when they run out), and
/// the number of calls.
fn tokens(
    tokens: Vec<String>,
) -> (
    impl Fn() -> std::future::Ready<Result<String, Infallible>> + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let callback = move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(tokens[n.min(tokens.len() - 1)].clone()))
    };
    (callback, calls)
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_rooms_resumed() {
    let server = TestServer::start(JWT).await;
    // The first token runs out within two seconds; the next one lasts.
    let (callback, calls) = tokens(vec![token("alice", 2, SECRET), token("alice", 600, SECRET)]);
    let options = fast(&server.addr.to_string(), "alice").token(callback);
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let bob_token = token("bob", 600, SECRET);
    let mut bob =
        common::Client::try_open_with_token(server.channel().await, "bob", Some(&bob_token))
            .await
            .unwrap();
    bob.join("r").await;
    bob.chat("r", "before").await;
    alice_events.wait_content("r", "before").await;

    let reason = alice_events
        .wait_for("the expiry", |events| {
            events.iter().find_map(|event| match event {
                Event::Reconnecting { reason, .. } => Some(reason.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(reason, "UNAUTHENTICATED: token expired");
    alice_events
        .wait_for("the resume", |events| {
            events
                .iter()
                .find(|e| matches!(e, Event::Resumed { .. }))
                .cloned()
        })
        .await;
    bob.chat("r", "after").await;
    alice_events.wait_content("r", "after").await;
    let ack = alice.post("r", "me again").await.unwrap();
    let mine = alice_events.wait_content("r", "me again").await;
    assert_eq!((mine.user.as_str(), mine.seq), ("alice", ack.seq));

    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the first token, then one fresh one"
    );
    let contents: Vec<String> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, ["before", "after", "me again"]);
    assert_eq!(alice_events.resumed(), [("r".to_string(), 0, false)]);
}

#[tokio::test]
async fn a_refused_fresh_token_ends_the_client_with_a_clear_error() {
    let server = TestServer::start(JWT).await;
    let forged = token("alice", 600, "another-secret-entirely");
    let (callback, calls) = tokens(vec![token("alice", 2, SECRET), forged.clone()]);
    let options = fast(&server.addr.to_string(), "alice").token(callback);
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();

    let error = alice_events.closed().await.expect("ended by an error");
    assert_eq!(
        error.to_string(),
        "authentication failed: a fresh token was refused too: \
         authentication failed: invalid token: InvalidSignature"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(alice.post("r", "anyone?").await, Err(ClientError::Closed));

    // At the first connection, likewise: one fresh token, then the error.
    let (callback, calls) = tokens(vec![forged]);
    let options = fast(&server.addr.to_string(), "alice").token(callback);
    let refused = Client::connect(options).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Unauthenticated(_)),
        "{refused}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tls_with_the_servers_ca_connects_and_without_it_does_not() {
    let ca = TestCa::new("test ca");
    let server = tls_server(&ca, None, "client-lib").await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert_pem))
        .domain_name("localhost");
    // host:port with TLS settings means https.
    let options = fast(&server.addr.to_string(), "alice").tls(tls);
    let (alice, _events) = Client::connect(options).await.unwrap();
    alice.join("r").await.unwrap();
    assert_eq!(alice.post("r", "over tls").await.unwrap().seq, 1);

    let untrusted = fast(&format!("https://{}", server.addr), "mallory");
    let refused = Client::connect(untrusted).await.unwrap_err();
    assert!(matches!(refused, ClientError::Connect { .. }), "{refused}");
}

#[tokio::test]
async fn a_kicked_client_stops_without_retrying() {
    let server = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n")).await;
    let (alice, events) = Client::connect(fast(&server.addr.to_string(), "alice"))
        .await
        .unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    admin(&server, Some(TOKEN))
        .await
        .kick(KickRequest {
            target: Some(Target::User("alice".into())),
            mode: KickMode::Disconnect.into(),
            reason: "spam".into(),
            ..KickRequest::default()
        })
        .await
        .unwrap();
    let error = alice_events.closed().await;
    assert_eq!(
        error,
        Some(ClientError::Ended {
            code: Code::PermissionDenied,
            message: "kicked: spam".into()
        })
    );
    let events = alice_events.events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. })),
        "{events:?}"
    );
    server.wait_sessions(0).await;
}
