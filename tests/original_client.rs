//! The client of the original design keeps working unchanged: it opens a stream, reads every
//! reply in its own task, sends five plain `Message{user, content, timestamp}` one second apart,
//! calls CloseSend, and reads until the end of the stream.

mod common;

use std::time::Duration;

use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use common::{TestServer, WAIT};
use tokio::{sync::mpsc, time::timeout};
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn original_design_client_gets_its_five_messages_and_a_clean_end() {
    let server = TestServer::start("").await;
    let mut client = ChatServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut replies = client
        .chat_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // The reader task of the original design: print every reply until the stream ends.
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            match replies.message().await {
                Ok(Some(message)) => {
                    println!("got: {message:?}");
                    received.push(message);
                }
                Ok(None) => return Ok(received),
                Err(status) => return Err(status),
            }
        }
    });

    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for i in 0..5 {
        ticks.tick().await;
        tx.send(Message {
            user: "client".into(),
            content: format!("msg {i}"),
            timestamp: 1_000 + i, // a client's clock is ignored
            ..Message::default()
        })
        .await
        .unwrap();
    }
    drop(tx); // CloseSend

    let received = timeout(WAIT, reader)
        .await
        .expect("stream ends after CloseSend")
        .unwrap()
        .expect("stream ends with OK");
    assert_eq!(received.len(), 5, "{received:?}");
    for (i, message) in received.iter().enumerate() {
        assert_eq!(message.kind(), Kind::Chat);
        assert_eq!(message.user, "client");
        assert_eq!(message.content, format!("msg {i}"));
        assert_eq!(message.room, "lobby");
        assert_eq!(message.seq, i as u64 + 1);
        assert!(message.timestamp > 1_000_000_000_000, "server time in ms");
        assert_eq!(
            uuid::Uuid::parse_str(&message.id)
                .unwrap()
                .get_version_num(),
            7
        );
    }
    // The session left the lobby on its way out.
    server.wait_sessions(0).await;
}
