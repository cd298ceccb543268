//! What an operator relies on: the standard health service and its transitions, gRPC reflection,
//! and Prometheus metrics that move by exactly what a known workload does. One test binary with
//! one server at a time, because the metrics recorder is process-wide.

mod common;

use std::time::Duration;

use chatrooms::proto::Kind;
use common::{TestServer, WAIT, scrape};
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// The value of the sample `series`, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    common::sample(text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn operations_health_reflection_and_metrics() {
    let server = TestServer::start(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[server]\nshutdown_grace_ms = 2000\n",
    )
    .await;

    // Reflection lists the chat service without the .proto file.
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["chat.v1.ChatService", "chat.v1.AdminService"] {
        assert!(names.contains(&service.to_string()), "{names:?}");
    }
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // Metrics move by exactly the workload below.
    let before = scrape(&server).await;
    assert!(
        before.contains("\nchat_history_bytes 0\n"),
        "present at 0 from start: {before}"
    );
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    ada.join("metrics-room").await; // 1 received; JOINED delivered
    bob.join("metrics-room").await; // 1 received; JOINED + presence to ada delivered
    ada.expect(Kind::Join).await;
    for n in 0..3 {
        ada.chat("metrics-room", &n.to_string()).await; // 3 received; 3 × 2 delivered
    }
    for _ in 0..3 {
        ada.expect(Kind::Chat).await;
        bob.expect(Kind::Chat).await;
    }
    bob.chat("elsewhere", "nope").await; // 1 received; 1 ERROR delivered
    bob.expect_error("not_a_member").await;
    let during = scrape(&server).await;
    let delta = |series: &str| sample(&during, series) - sample(&before, series);
    assert_eq!(delta("chat_messages_received_total"), 6.0, "{during}");
    assert_eq!(delta("chat_messages_delivered_total"), 10.0, "{during}");
    assert_eq!(
        delta("chat_requests_refused_total{code=\"not_a_member\"}"),
        1.0
    );
    assert_eq!(sample(&during, "chat_sessions_open"), 2.0);
    assert_eq!(sample(&during, "chat_rooms_open"), 1.0);
    let retained = server.hub.history_budget.used();
    assert!(retained > 0);
    assert_eq!(sample(&during, "chat_history_bytes"), retained as f64);
    assert_eq!(
        delta("chat_fanout_seconds_count"),
        3.0,
        "one per accepted CHAT"
    );
    assert!(
        !during.contains("metrics-room") && !during.contains("ada"),
        "no names in labels"
    );

    drop(ada);
    drop(bob);
    server.wait_sessions(0).await;
    let after = scrape(&server).await;
    let ended = sample(
        &after,
        "chat_sessions_ended_total{reason=\"client_closed\"}",
    ) - sample(
        &before,
        "chat_sessions_ended_total{reason=\"client_closed\"}",
    );
    assert_eq!(ended, 2.0, "{after}");
    assert_eq!(sample(&after, "chat_sessions_open"), 0.0);

    // Health: SERVING while up, NOT_SERVING as soon as shutdown begins.
    let mut health = HealthClient::new(server.channel().await);
    let check = health
        .check(HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status(), ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = timeout(WAIT, watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let shutdown = tokio::spawn(server.shutdown());
    let next = timeout(WAIT, watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // The open watch holds the transport until the grace period (2 s) cuts it.
    timeout(WAIT + Duration::from_secs(2), shutdown)
        .await
        .expect("server stops within its grace period")
        .unwrap();
}
