//! Resending safely: a CHAT's `ref` is its idempotency key. A CHAT whose `(user, room, ref)` the
//! room accepted within `dedup_window_ms` is not posted again; its sender gets the original ack
//! (the same CHAT, `id`, `seq` and `timestamp` included, with the `ref`) and nobody else hears
//! anything. Each test runs on both engines.

mod common;

use chatrooms::proto::Kind;
use common::{Engine, TestServer};

per_engine![
    a_resend_gets_the_original_ack_and_nobody_else_hears_it,
    a_resend_spends_a_rate_token_like_any_chat,
    the_key_is_the_user_and_the_ref_in_one_room,
    an_empty_ref_or_a_window_of_zero_deduplicates_nothing,
];

async fn a_resend_gets_the_original_ack_and_nobody_else_hears_it(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let (mut ada, mut bob) = server.pair_in("r", "ada", "bob").await;
    ada.chat_with_ref("r", "hello", "once").await;
    let original = ada.expect(Kind::Chat).await;
    assert_eq!(bob.expect(Kind::Chat).await.id, original.id);
    // The connection broke before the ack was seen: a new stream of the same user resends.
    drop(ada);
    assert_eq!(bob.expect(Kind::Leave).await.user, "ada");
    let mut again = server.client("ada").await;
    again.join("r").await;
    // Its backlog holds the CHAT, but no ref says it is the one typed before the break.
    let replayed = again.expect(Kind::Chat).await;
    assert_eq!(
        (replayed.id.as_str(), replayed.replay),
        (original.id.as_str(), true)
    );
    assert!(replayed.r#ref.is_empty());
    bob.expect(Kind::Join).await;
    again.chat_with_ref("r", "hello", "once").await;
    let ack = again.expect(Kind::Chat).await;
    assert_eq!(ack, original, "the original ack, ref included");
    bob.expect_silence().await;
    // The room holds it once: the next CHAT is seq 2, and a fresh joiner's backlog has both.
    again.chat("r", "next").await;
    assert_eq!(again.expect(Kind::Chat).await.seq, 2);
    assert_eq!(bob.expect(Kind::Chat).await.seq, 2);
    let mut cy = server.client("cy").await;
    cy.join("r").await;
    let backlog = [cy.expect(Kind::Chat).await, cy.expect(Kind::Chat).await];
    assert_eq!(backlog.map(|m| m.content), ["hello", "next"]);
    cy.expect_silence().await;
}

/// The decision: a resend is checked like any CHAT (membership, size, the member's rate) before
/// the dedup window answers it, so resending cannot be used to get around the rate limit.
async fn a_resend_spends_a_rate_token_like_any_chat(engine: Engine) {
    // Burst 3: the JOIN, the CHAT, its first resend.
    let server = TestServer::start_on(engine, "[limits]\nrate_per_sec = 0.001\nburst = 3\n").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    ada.chat_with_ref("r", "hi", "k").await;
    let original = ada.expect(Kind::Chat).await;
    ada.chat_with_ref("r", "hi", "k").await;
    assert_eq!(ada.expect(Kind::Chat).await, original);
    ada.chat_with_ref("r", "hi", "k").await;
    let refused = ada.expect_error("rate_limited").await;
    assert_eq!(refused.r#ref, "k");
}

async fn the_key_is_the_user_and_the_ref_in_one_room(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let (mut ada, mut bob) = server.pair_in("r", "ada", "bob").await;
    ada.join("elsewhere").await;
    ada.chat_with_ref("r", "from ada", "same").await;
    let first = ada.expect(Kind::Chat).await;
    bob.expect(Kind::Chat).await;
    // Another user's `ref`, and the same `ref` in another room, are other CHATs.
    bob.chat_with_ref("r", "from bob", "same").await;
    assert_eq!(bob.expect(Kind::Chat).await.seq, 2);
    assert_eq!(ada.expect(Kind::Chat).await.content, "from bob");
    ada.chat_with_ref("elsewhere", "from ada", "same").await;
    let other_room = ada.expect(Kind::Chat).await;
    assert_eq!((other_room.room.as_str(), other_room.seq), ("elsewhere", 1));
    // Different content under a `ref` already used is still the resend it claims to be.
    ada.chat_with_ref("r", "edited", "same").await;
    assert_eq!(ada.expect(Kind::Chat).await, first);
    bob.expect_silence().await;
}

async fn an_empty_ref_or_a_window_of_zero_deduplicates_nothing(engine: Engine) {
    let config = "[rooms.\"raw\"]\ndedup_window_ms = 0\n";
    let server = TestServer::start_on(engine, config).await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    ada.join("raw").await;
    for seq in 1..=2 {
        ada.chat_with_ref("r", "no ref", "").await;
        assert_eq!(ada.expect(Kind::Chat).await.seq, seq);
        ada.chat_with_ref("raw", "window off", "k").await;
        let posted = ada.expect(Kind::Chat).await;
        assert_eq!((posted.room.as_str(), posted.seq), ("raw", seq));
    }
}
