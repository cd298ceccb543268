//! The real binary at its descriptor limit: with a limit far below `max_connections`, a flood of
//! idle sockets does not make it spin (the cap is lowered to fit, and accepting waits for a
//! place), and once the sockets go a fresh client is served.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::process::Process;
use tokio::net::TcpStream;

const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n";

#[tokio::test]
async fn out_of_descriptors_the_server_neither_spins_nor_stops_serving() {
    let mut server = Process::start_limited("descriptors", CONFIG, Some(64)).await;
    server
        .wait_log("does not fit under the descriptor limit")
        .await;
    // Twice what the process may hold (and within the listen backlog, so no connect waits).
    let addr: SocketAddr = server.addr.parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let before = server.cpu_time();
    // A measuring window, not a wait for an event: a server spinning on EMFILE burns all of it.
    const WINDOW: Duration = Duration::from_secs(2);
    tokio::time::sleep(WINDOW).await;
    let spent = server.cpu_time() - before;
    assert!(
        spent < WINDOW / 5,
        "{spent:?} of CPU in {WINDOW:?} with every descriptor taken"
    );
    drop(idle);
    let mut fresh = server.client("fresh").await;
    fresh.join("r").await;
    server.child.kill().await.unwrap();
}
