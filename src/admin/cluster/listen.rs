//! The listener every node runs: it subscribes the operator channel and its own answer channel,
//! carries out each request on this node and publishes the answer to the caller, and hands
//! answers to this node's own waiting requests ([`Operators::deliver`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio::{sync::mpsc, time::sleep};
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    INBOX, OPERATOR_SHARD, Operators,
    answer::WireAnswer,
    order::{Order, WireOrder},
};
use crate::{
    cluster::{
        OPERATOR_CHANNEL, Published, RECONNECT_MAX, RECONNECT_MIN, RedisEngine, Subscription,
        answer_channel, payload,
    },
    hub::Hub,
};

pub(super) async fn listen(hub: Arc<Hub>, operators: Arc<Operators>) {
    let engine = operators.engine.clone();
    let (sink, mut inbox) = mpsc::channel(INBOX);
    // Answers first: once requests arrive, this node may also be sending its own.
    let _answers = subscribe(&engine, answer_channel(engine.node_id()), sink.clone()).await;
    let _requests = subscribe(&engine, OPERATOR_CHANNEL.to_string(), sink).await;
    operators.listening.send_replace(true);
    info!("listening for operator requests from the cluster");
    while let Some(published) = inbox.recv().await {
        match published {
            Published::Request { origin, id, body } => {
                // A task each: one slow room must not hold up the next request.
                tokio::spawn(carry_out(hub.clone(), engine.clone(), origin, id, body));
            }
            Published::Answer { node, id, body } => operators.deliver(&node, &id, &body),
            // After a lost connection: a request missed meanwhile goes unanswered, and its caller
            // stops waiting at its deadline.
            Published::Resubscribed => {
                warn!("operator channels resubscribed; requests sent meanwhile were missed");
            }
            Published::Chat { .. } | Published::Join { .. } | Published::Leave { .. } => {}
        }
    }
}

/// Subscribes `channel`, retrying with backoff until Redis answers: a node may start while
/// Redis is down, and its operator channels must be there once it is back.
async fn subscribe(
    engine: &RedisEngine,
    channel: String,
    sink: mpsc::Sender<Published>,
) -> Subscription {
    let mut pause = RECONNECT_MIN;
    loop {
        match engine
            .subscribe_channel(OPERATOR_SHARD, channel.clone(), sink.clone())
            .await
        {
            Ok(subscription) => return subscription,
            Err(error) => {
                debug!(%channel, %error, "operator channel not subscribed yet; retrying");
                sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}

async fn carry_out(hub: Arc<Hub>, engine: RedisEngine, origin: String, id: String, body: Bytes) {
    let order = serde_json::from_slice::<WireOrder>(&body)
        .map_err(|e| e.to_string())
        .and_then(Order::try_from);
    // The span ties this node's logs of the action to the caller's request id.
    let span = info_span!("operator_request", request = %id, %origin);
    let answer = match order {
        Ok(order) => {
            let action = order.action();
            let outcome = async {
                info!(action, ?order, "admin action asked by the cluster");
                order.run(&hub).await
            }
            .instrument(span.clone())
            .await;
            match outcome {
                Ok(outcome) => WireAnswer {
                    found: outcome.is_some(),
                    count: outcome.unwrap_or(0) as u64,
                    error: None,
                },
                Err(status) => {
                    span.in_scope(|| warn!(action, %status, "admin action failed here"));
                    WireAnswer::failed(&status)
                }
            }
        }
        Err(reason) => {
            span.in_scope(|| warn!(%reason, "unreadable operator request"));
            WireAnswer::failed(&Status::invalid_argument(format!(
                "unreadable request: {reason}"
            )))
        }
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(body) => body,
        Err(error) => {
            warn!(%origin, request = %id, %error, "cannot encode an operator answer");
            return;
        }
    };
    let node = engine.node_id().as_bytes();
    let payload = payload::encode(&[b"R", node, id.as_bytes(), &body]);
    if let Err(error) = engine
        .publish(OPERATOR_SHARD, answer_channel(&origin), payload)
        .await
    {
        warn!(%origin, request = %id, %error, "operator answer not delivered");
    }
}
