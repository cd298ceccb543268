//! A room's order and history in Redis: [`RedisEngine::post_chat`] assigns the seq (and the
//! epoch when the room's sequence starts here), appends to the room's stream, remembers a
//! `ref` for the dedup window and publishes, in one script; [`RedisEngine::replay`] and
//! [`RedisEngine::last_seq`] read them back. Called by the Redis log (`crate::log::redis`).

use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::RedisEngine;
use crate::{
    cluster::{
        Unavailable,
        keys::{RoomKeys, dedup_key},
        scripts::SCRIPTS,
    },
    names::{self, SessionId},
};

/// A CHAT's `(user, ref)`, remembered for `window` so that a resend is not posted again.
#[derive(Debug, Clone)]
pub struct Dedup {
    pub user: String,
    pub r#ref: String,
    pub window: Duration,
}

/// What [`RedisEngine::post_chat`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Appended and published with this seq.
    New(u64),
    /// A resend within the window: nothing written; the original's seq and stored body (with
    /// its epoch, without its seq).
    Resent { seq: u64, body: Bytes },
}

impl RedisEngine {
    /// [`RedisEngine::post_chat`] without a `ref` to remember; answers the seq.
    pub async fn publish_chat(
        &self,
        room: &str,
        max_len: usize,
        id: &str,
        origin: SessionId,
        body: Bytes,
    ) -> Result<u64, Unavailable> {
        match self
            .post_chat(room, max_len, id, origin, body, None)
            .await?
        {
            Posted::New(seq) | Posted::Resent { seq, .. } => Ok(seq),
        }
    }

    /// Assigns the room's next seq, appends `body` (with the room's epoch) to its log (trimmed
    /// to about `max_len`, never fewer) and publishes it, in one atomic script; with `dedup`,
    /// unless the same user's `ref` is remembered, and then remembers it. After
    /// [`Unavailable::TimedOut`] the outcome is unknown: the CHAT may still have been published.
    pub async fn post_chat(
        &self,
        room: &str,
        max_len: usize,
        id: &str,
        origin: SessionId,
        body: Bytes,
        dedup: Option<Dedup>,
    ) -> Result<Posted, Unavailable> {
        let keys = RoomKeys::new(room);
        let window = dedup.as_ref().map_or(0, |d| d.window.as_millis().max(1));
        let dedup = dedup.map(|d| dedup_key(room, &d.user, &d.r#ref));
        let args = [
            keys.channel.into_bytes(),
            max_len.max(1).to_string().into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            origin.0.to_string().into_bytes(),
            id.as_bytes().to_vec(),
            body.to_vec(),
            self.retention_arg(),
            names::new_epoch().into_bytes(),
            window.to_string().into_bytes(),
        ];
        let reply = self
            .call(room, "publish_chat", move |mut conn| async move {
                let mut script = SCRIPTS.publish_chat.key(keys.seq);
                script.key(keys.log).key(keys.epoch);
                if let Some(dedup) = dedup {
                    script.key(dedup);
                }
                script.arg(&args[..]).invoke_async::<Value>(&mut conn).await
            })
            .await?;
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1), Value::Int(seq)] => Ok(Posted::New(*seq as u64)),
                [Value::Int(0), Value::Int(seq), Value::BulkString(body)] => Ok(Posted::Resent {
                    seq: *seq as u64,
                    body: Bytes::copy_from_slice(body),
                }),
                _ => Err(self.unexpected(room, "publish_chat", format!("reply {items:?}"))),
            },
            other => Err(self.unexpected(room, "publish_chat", format!("reply {other:?}"))),
        }
    }

    /// Retained CHAT bodies with their seqs, ascending, none above `upto`: with `since_seq > 0`
    /// those after `since_seq`; with `since_seq == 0` the last `last_n`.
    pub async fn replay(
        &self,
        room: &str,
        since_seq: u64,
        last_n: usize,
        upto: u64,
    ) -> Result<Vec<(u64, Bytes)>, Unavailable> {
        if upto == 0 || since_seq >= upto || (since_seq == 0 && last_n == 0) {
            return Ok(Vec::new());
        }
        let log = RoomKeys::new(room).log;
        let reply = self
            .call(room, "replay", move |mut conn| async move {
                // Stream ids are `<seq>-1`; a bare `N` means `N-0` as a start and `N-<max>` as an
                // end, so these bounds select exactly on seq.
                let cmd = if since_seq > 0 {
                    let mut cmd = redis::cmd("XRANGE");
                    cmd.arg(&log).arg(since_seq + 1).arg(upto);
                    cmd
                } else {
                    let mut cmd = redis::cmd("XREVRANGE");
                    cmd.arg(&log).arg(upto).arg("-").arg("COUNT").arg(last_n);
                    cmd
                };
                cmd.query_async::<Value>(&mut conn).await
            })
            .await?;
        let mut entries = parse_stream_entries(reply)
            .ok_or_else(|| self.unexpected(room, "replay", "unexpected stream reply".into()))?;
        if since_seq == 0 {
            entries.reverse();
        }
        Ok(entries)
    }

    /// The room's last seq (0 before its first CHAT) and its epoch; empty when the room has no
    /// sequence (its seq key is missing: an epoch key left without it is not the room's).
    pub async fn sequence(&self, room: &str) -> Result<(u64, String), Unavailable> {
        let keys = RoomKeys::new(room);
        let (seq, epoch) = self
            .call(room, "sequence", move |mut conn| async move {
                redis::cmd("MGET")
                    .arg(keys.seq)
                    .arg(keys.epoch)
                    .query_async::<(Option<u64>, Option<String>)>(&mut conn)
                    .await
            })
            .await?;
        match seq {
            Some(seq) => Ok((seq, epoch.unwrap_or_default())),
            None => Ok((0, String::new())),
        }
    }

    /// The room's last seq (0 before its first CHAT).
    pub async fn last_seq(&self, room: &str) -> Result<u64, Unavailable> {
        let seq = RoomKeys::new(room).seq;
        let reply = self
            .call(room, "last_seq", move |mut conn| async move {
                redis::cmd("GET")
                    .arg(seq)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.unwrap_or(0))
    }
}

/// XRANGE/XREVRANGE reply → (seq, body) in reply order; `None` if it is not a stream reply.
fn parse_stream_entries(reply: Value) -> Option<Vec<(u64, Bytes)>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return None;
        };
        let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
            return None;
        };
        let seq = std::str::from_utf8(id)
            .ok()?
            .split_once('-')?
            .0
            .parse()
            .ok()?;
        let body = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(body)] if name == b"b" => {
                Some(Bytes::copy_from_slice(body))
            }
            _ => None,
        })?;
        out.push((seq, body));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_replies_parse_and_garbage_does_not() {
        let entry = |id: &str, body: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"b".to_vec()),
                    Value::BulkString(body.to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![entry("7-1", b"x"), entry("8-1", b"")]);
        assert_eq!(
            parse_stream_entries(reply),
            Some(vec![(7, Bytes::from_static(b"x")), (8, Bytes::new())])
        );
        assert_eq!(parse_stream_entries(Value::Nil), None);
        assert_eq!(
            parse_stream_entries(Value::Array(vec![entry("x-1", b"")])),
            None
        );
    }
}
