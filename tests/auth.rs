//! Authentication and room permissions (part of the security work): in jwt mode a stream needs
//! a valid bearer token (any case of the scheme; not before its `nbf`), whose `sub` stamps every
//! message, whose `rooms` claim limits the rooms and whose `exp` ends the session; read-only rooms
//! let only their writers post.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatrooms::proto::{Kind, Message};
use common::{Client, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use tonic::Code;

const SECRET: &str = "test-secret-of-enough-length";
const JWT: &str = "[auth]\nmode = \"jwt\"\nsecret = \"test-secret-of-enough-length\"\n";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<&'a str>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp: u64, rooms: Option<Vec<&str>>, secret: &str) -> String {
    let claims = Claims { sub, exp, rooms };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn open(server: &TestServer, token: Option<&str>) -> Result<Client, tonic::Status> {
    Client::try_open_with_token(server.channel().await, "ignored", token).await
}

#[tokio::test]
async fn jwt_mode_refuses_missing_expired_wrong_key_and_tampered_tokens() {
    let server = TestServer::start(JWT).await;
    let valid = token("alice", now() + 600, None, SECRET);
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });
    for (what, bad) in [
        ("missing", None),
        ("expired", Some(token("alice", now() - 600, None, SECRET))),
        // exp gets no leeway: the session would be ended at once anyway.
        (
            "expired 5 s ago",
            Some(token("alice", now() - 5, None, SECRET)),
        ),
        (
            "wrong key",
            Some(token("alice", now() + 600, None, "another-secret-entirely")),
        ),
        ("tampered", Some(tampered)),
        ("garbage", Some("not.a.jwt".to_string())),
    ] {
        let refused = open(&server, bad.as_deref()).await.err().expect(what);
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    assert!(open(&server, Some(&valid)).await.is_ok());
}

#[derive(Serialize)]
struct NotBefore<'a> {
    sub: &'a str,
    exp: u64,
    nbf: u64,
}

fn token_not_before(nbf: u64) -> String {
    let claims = NotBefore {
        sub: "alice",
        exp: now() + 2 * 365 * 24 * 3600,
        nbf,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_is_refused_before_its_nbf_with_30_s_of_leeway() {
    let server = TestServer::start(JWT).await;
    let year = 365 * 24 * 3600;
    let refused = open(&server, Some(&token_not_before(now() + year)))
        .await
        .err()
        .expect("nbf a year ahead");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("ImmatureSignature"),
        "{refused:?}"
    );
    // An issuer whose clock runs a little ahead: within the leeway.
    let mut skewed = open(&server, Some(&token_not_before(now() + 10)))
        .await
        .expect("nbf 10 s ahead is within the leeway");
    skewed.chat("", "hi").await;
    assert_eq!(skewed.expect(Kind::Chat).await.user, "alice");
    assert!(
        open(&server, Some(&token_not_before(now() - 60)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_session_ends_unauthenticated_when_its_token_expires() {
    let server = TestServer::start(JWT).await;
    let exp = now() + 2;
    let mut alice = open(&server, Some(&token("alice", exp, None, SECRET)))
        .await
        .unwrap();
    alice.join("r").await;
    let mut bob = open(&server, Some(&token("bob", now() + 600, None, SECRET)))
        .await
        .unwrap();
    bob.join("r").await;
    alice.expect(Kind::Join).await;
    // Alice's stream ends by itself, with no request from her: the session timer does it.
    let status = alice.expect_end(Code::Unauthenticated).await;
    assert!(status.message().contains("token expired"), "{status:?}");
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        ended + Duration::from_millis(50) >= Duration::from_secs(exp),
        "ended {ended:?}, before exp {exp}"
    );
    // Her membership went with it; bob, whose token is valid, carries on.
    assert_eq!(bob.expect(Kind::Leave).await.user, "alice");
    bob.chat("r", "still here").await;
    assert_eq!(bob.expect(Kind::Chat).await.content, "still here");
    server.wait_sessions(1).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = TestServer::start(JWT).await;
    let valid = token("alice", now() + 600, None, SECRET);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let header = format!("{scheme} {valid}");
        let mut alice =
            Client::try_open_with_authorization(server.channel().await, "alice", Some(&header))
                .await
                .unwrap_or_else(|status| panic!("{scheme}: {status:?}"));
        alice.chat("", scheme).await;
        assert_eq!(alice.expect(Kind::Chat).await.user, "alice", "{scheme}");
    }
    let header = format!("Basic {valid}");
    let refused =
        Client::try_open_with_authorization(server.channel().await, "alice", Some(&header))
            .await
            .err()
            .expect("another scheme");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_token_whose_sub_looks_like_system_is_refused() {
    let server = TestServer::start(JWT).await;
    for sub in ["system", "\u{455}\u{443}\u{455}t\u{435}m"] {
        let refused = open(&server, Some(&token(sub, now() + 600, None, SECRET)))
            .await
            .err()
            .expect(sub);
        assert_eq!(refused.code(), Code::Unauthenticated, "{sub}: {refused:?}");
    }
}

#[tokio::test]
async fn a_valid_tokens_sub_stamps_every_message_whatever_user_says() {
    let server = TestServer::start(JWT).await;
    let mut alice = open(&server, Some(&token("alice", now() + 600, None, SECRET)))
        .await
        .unwrap();
    alice
        .send(Message {
            kind: Kind::Join.into(),
            room: "r".into(),
            user: "mallory".into(),
            ..Message::default()
        })
        .await;
    assert_eq!(alice.expect(Kind::Joined).await.members, vec!["alice"]);
    alice
        .send(Message {
            kind: Kind::Chat.into(),
            room: "r".into(),
            user: "mallory".into(),
            content: "hi".into(),
            ..Message::default()
        })
        .await;
    assert_eq!(alice.expect(Kind::Chat).await.user, "alice");
}

#[tokio::test]
async fn the_rooms_claim_answers_forbidden_outside_it() {
    let server = TestServer::start(JWT).await;
    let limited = token("agent", now() + 600, Some(vec!["support-*", "ops"]), SECRET);
    let mut agent = open(&server, Some(&limited)).await.unwrap();
    agent.join("support-42").await;
    agent.join("ops").await;
    agent.send_kind(Kind::Join, "general").await;
    assert_eq!(agent.expect_error("forbidden").await.room, "general");
    agent.chat("general", "sneaky").await;
    agent.expect_error("forbidden").await;
    agent.chat("support-42", "allowed").await;
    assert_eq!(agent.expect(Kind::Chat).await.content, "allowed");
}

#[tokio::test]
async fn read_only_rooms_let_only_their_writers_post() {
    let server =
        TestServer::start("[rooms.\"news\"]\nread_only = true\nwriters = [\"editor\"]\n").await;
    let (mut editor, mut reader) = server.pair_in("news", "editor", "reader").await;
    reader.chat("news", "my opinion").await;
    reader.expect_error("forbidden").await;
    editor.chat("news", "headline").await;
    assert_eq!(reader.expect(Kind::Chat).await.content, "headline");
    assert_eq!(editor.expect(Kind::Chat).await.content, "headline");
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iss: &'a str,
    aud: &'a str,
}

fn es256(key: &rcgen::KeyPair, iss: &str, aud: &str) -> String {
    let claims = IssuedClaims {
        sub: "erin",
        exp: now() + 600,
        iss,
        aud,
    };
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap()
}

#[tokio::test]
async fn es256_public_keys_verify_tokens_with_issuer_and_audience() {
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jwt-{}-es256.pem", std::process::id()));
    std::fs::write(&path, key.public_key_pem()).unwrap();
    let server = TestServer::start(&format!(
        "[auth]\nmode = \"jwt\"\npublic_key_path = {:?}\nissuer = \"https://auth.test\"\naudience = \"chat\"\n",
        path.display().to_string()
    ))
    .await;

    let mut erin = open(&server, Some(&es256(&key, "https://auth.test", "chat")))
        .await
        .unwrap();
    erin.chat("", "signed with ES256").await;
    assert_eq!(erin.expect(Kind::Chat).await.user, "erin");

    let other_key = rcgen::KeyPair::generate().unwrap();
    for (what, bad) in [
        ("other key", es256(&other_key, "https://auth.test", "chat")),
        ("wrong issuer", es256(&key, "https://evil.test", "chat")),
        ("wrong audience", es256(&key, "https://auth.test", "other")),
        // HS256 signed with the public key's text: the algorithm must not follow the header.
        (
            "algorithm confusion",
            token("erin", now() + 600, None, &key.public_key_pem()),
        ),
    ] {
        let refused = open(&server, Some(&bad)).await.err().expect(what);
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    std::fs::remove_file(path).unwrap();
}

/// Test-only RSA keys (see tests/fixtures/README.md): committed because generating RSA keys in a
/// debug build is slow.
const RS256_KEY: &str = include_str!("fixtures/rs256-test-key.pem");
const RS256_OTHER_KEY: &str = include_str!("fixtures/rs256-other-key.pem");

fn rs(algorithm: Algorithm, private_pem: &str, iss: &str, aud: &str) -> String {
    let claims = IssuedClaims {
        sub: "robin",
        exp: now() + 600,
        iss,
        aud,
    };
    let signing = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    encode(&Header::new(algorithm), &claims, &signing).unwrap()
}

#[tokio::test]
async fn rs256_public_keys_verify_tokens_with_issuer_and_audience() {
    // The loader takes both PEM forms of an RSA public key: SPKI, as `openssl pkey -pubout`
    // writes it, and PKCS#1, as older tooling does.
    for fixture in ["rs256-test-pub.pem", "rs256-test-pub-pkcs1.pem"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let public_pem = std::fs::read_to_string(&path).unwrap();
        let server = TestServer::start(&format!(
            "[auth]\nmode = \"jwt\"\npublic_key_path = {:?}\nissuer = \"https://auth.test\"\naudience = \"chat\"\n",
            path.display().to_string()
        ))
        .await;

        let valid = rs(Algorithm::RS256, RS256_KEY, "https://auth.test", "chat");
        let mut robin = open(&server, Some(&valid)).await.unwrap();
        robin.chat("", "signed with RS256").await;
        assert_eq!(robin.expect(Kind::Chat).await.user, "robin", "{fixture}");

        let es256_key = rcgen::KeyPair::generate().unwrap();
        for (what, bad) in [
            (
                "other key",
                rs(
                    Algorithm::RS256,
                    RS256_OTHER_KEY,
                    "https://auth.test",
                    "chat",
                ),
            ),
            (
                "wrong issuer",
                rs(Algorithm::RS256, RS256_KEY, "https://evil.test", "chat"),
            ),
            (
                "wrong audience",
                rs(Algorithm::RS256, RS256_KEY, "https://auth.test", "other"),
            ),
            // The right key with another RSA hash: the algorithm is pinned, not just the family.
            (
                "RS384",
                rs(Algorithm::RS384, RS256_KEY, "https://auth.test", "chat"),
            ),
            ("ES256", es256(&es256_key, "https://auth.test", "chat")),
            // HS256 signed with the public key's text: the algorithm must not follow the header.
            (
                "algorithm confusion",
                token("robin", now() + 600, None, &public_pem),
            ),
        ] {
            let refused = open(&server, Some(&bad)).await.err().expect(what);
            assert_eq!(
                refused.code(),
                Code::Unauthenticated,
                "{fixture}, {what}: {refused:?}"
            );
        }
    }
}
