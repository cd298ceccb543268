//! `/metrics` of a fresh server: every counter and gauge is exported at 0 before any traffic, so
//! dashboards and `absent()` alerts work from start-up. A test binary of its own with one server,
//! because the metrics recorder is process-wide and this must be the process's first server.

mod common;

use chatrooms::error::{ChatError, Fatal};
use common::{TestServer, sample, scrape};

#[tokio::test]
async fn a_fresh_server_exports_every_counter_and_gauge_at_zero() {
    let server = TestServer::start("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let text = scrape(&server).await;
    let mut series = vec![
        "chat_sessions_open".to_string(),
        "chat_rooms_open".to_string(),
        "chat_history_bytes".to_string(),
        "chat_messages_received_total".to_string(),
        "chat_messages_delivered_total".to_string(),
        "chat_requests_throttled_total".to_string(),
        "chat_resends_deduplicated_total".to_string(),
        "chat_sessions_ended_total{reason=\"slow_consumer\"}".to_string(),
        "chat_sessions_ended_total{reason=\"token_expired\"}".to_string(),
        "chat_requests_refused_total{code=\"rate_limited\"}".to_string(),
    ];
    series.extend(
        ChatError::CODES
            .iter()
            .map(|code| format!("chat_requests_refused_total{{code=\"{code}\"}}")),
    );
    series.extend(
        Fatal::REASONS
            .iter()
            .map(|reason| format!("chat_sessions_ended_total{{reason=\"{reason}\"}}")),
    );
    for series in series {
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in:\n{text}");
    }
    server.shutdown().await;
}
