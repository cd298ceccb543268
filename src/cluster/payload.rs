//! The pub/sub payload format shared by the Lua scripts (writers, `scripts.rs`) and the shard
//! subscribers (reader, `subscriber/routing.rs`), and [`Published`], what a room's sink receives.
//!
//! A payload is a sequence of fields, each written as `<byte length in decimal>:<bytes>` with
//! nothing between fields (netstrings without the trailing comma). It is binary-safe, trivial to
//! build in Lua (`#s .. ':' .. s`) and parsed without copying until the final values:
//!
//! | kind | fields |
//! |---|---|
//! | chat | `C`, seq, origin node, origin session, message id, body |
//! | join | `J`, node, session, user, body |
//! | leave | `L`, node, session, user, body (empty when Redis expired the entry: no node built one) |
//! | operator request | `A`, origin node, request id, body |
//! | operator answer | `R`, answering node, request id, body |
//!
//! For chat and presence, `body` is an encoded protobuf `Message` as the origin node built it (a
//! CHAT without its seq); for operator requests and answers it is JSON (`crate::admin::cluster`).

use bytes::Bytes;

use crate::names::SessionId;

/// What a room subscribed through [`super::RedisEngine::subscribe`] receives, in the order Redis
/// published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A CHAT accepted by some node; `seq` is the room's global sequence number.
    Chat {
        seq: u64,
        node: String,
        session: SessionId,
        id: String,
        body: Bytes,
    },
    /// A member (of any node) joined.
    Join {
        node: String,
        session: SessionId,
        user: String,
        body: Bytes,
    },
    /// A member left, or its presence entry expired (`body` is `None` then: the subscriber
    /// builds the LEAVE from `user`).
    Leave {
        node: String,
        session: SessionId,
        user: String,
        body: Option<Bytes>,
    },
    /// An operator action another node (or this one) asks every node to carry out.
    Request {
        origin: String,
        id: String,
        body: Bytes,
    },
    /// A node's answer to request `id`, on the origin node's own channel.
    Answer {
        node: String,
        id: String,
        body: Bytes,
    },
    /// The shard's pub/sub connection was lost and is back, with this room subscribed again.
    /// Anything published in between was missed: re-add local presence and fetch the seq gap.
    Resubscribed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("field length is not a decimal number followed by ':'")]
    BadLength,
    #[error("field is longer than the bytes left")]
    Truncated,
    #[error("more fields than any kind has")]
    TooManyFields,
    #[error("unknown kind or wrong number of fields")]
    UnknownShape,
    #[error("a number field is not a decimal u64")]
    BadNumber,
    #[error("a text field is not UTF-8")]
    BadText,
}

/// The most fields any kind has (chat).
const MAX_FIELDS: usize = 6;
/// Digits of the largest length we accept (u64::MAX has 20).
const MAX_LENGTH_DIGITS: usize = 20;

/// Parses one payload. Never panics, whatever the bytes.
pub fn decode(payload: &[u8]) -> Result<Published, PayloadError> {
    let fields = split_fields(payload)?;
    match fields.as_slice() {
        [b"C", seq, node, session, id, body] => Ok(Published::Chat {
            seq: number(seq)?,
            node: text(node)?,
            session: SessionId(number(session)?),
            id: text(id)?,
            body: Bytes::copy_from_slice(body),
        }),
        [b"J", node, session, user, body] => Ok(Published::Join {
            node: text(node)?,
            session: SessionId(number(session)?),
            user: text(user)?,
            body: Bytes::copy_from_slice(body),
        }),
        [b"L", node, session, user, body] => Ok(Published::Leave {
            node: text(node)?,
            session: SessionId(number(session)?),
            user: text(user)?,
            body: (!body.is_empty()).then(|| Bytes::copy_from_slice(body)),
        }),
        [b"A", origin, id, body] => Ok(Published::Request {
            origin: text(origin)?,
            id: text(id)?,
            body: Bytes::copy_from_slice(body),
        }),
        [b"R", node, id, body] => Ok(Published::Answer {
            node: text(node)?,
            id: text(id)?,
            body: Bytes::copy_from_slice(body),
        }),
        _ => Err(PayloadError::UnknownShape),
    }
}

/// Writes `fields` in the payload format: what the scripts do in Lua, for the payloads a node
/// publishes itself (operator requests and answers).
pub fn encode(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
    for field in fields {
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field);
    }
    out
}

fn split_fields(mut input: &[u8]) -> Result<Vec<&[u8]>, PayloadError> {
    let mut fields = Vec::with_capacity(MAX_FIELDS);
    while !input.is_empty() {
        if fields.len() == MAX_FIELDS {
            return Err(PayloadError::TooManyFields);
        }
        let colon = input
            .iter()
            .take(MAX_LENGTH_DIGITS + 1)
            .position(|&byte| byte == b':')
            .ok_or(PayloadError::BadLength)?;
        let len = usize::try_from(number(&input[..colon]).map_err(|_| PayloadError::BadLength)?)
            .map_err(|_| PayloadError::Truncated)?;
        let rest = &input[colon + 1..];
        if rest.len() < len {
            return Err(PayloadError::Truncated);
        }
        fields.push(&rest[..len]);
        input = &rest[len..];
    }
    Ok(fields)
}

fn number(digits: &[u8]) -> Result<u64, PayloadError> {
    if digits.is_empty() || digits.len() > MAX_LENGTH_DIGITS {
        return Err(PayloadError::BadNumber);
    }
    digits.iter().try_fold(0u64, |value, &byte| {
        if !byte.is_ascii_digit() {
            return Err(PayloadError::BadNumber);
        }
        value
            .checked_mul(10)
            .and_then(|value| value.checked_add(u64::from(byte - b'0')))
            .ok_or(PayloadError::BadNumber)
    })
}

fn text(bytes: &[u8]) -> Result<String, PayloadError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| PayloadError::BadText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_round_trips_with_binary_body() {
        let body = [0u8, b':', b'9', 0xff, b'\n'];
        let payload = encode(&[b"C", b"12", b"node-a", b"7", b"0190-uuid", &body]);
        assert_eq!(
            decode(&payload),
            Ok(Published::Chat {
                seq: 12,
                node: "node-a".into(),
                session: SessionId(7),
                id: "0190-uuid".into(),
                body: Bytes::copy_from_slice(&body),
            })
        );
    }

    #[test]
    fn presence_round_trips_and_empty_leave_body_is_none() {
        let join = encode(&[b"J", b"n", b"3", b"al|ice", b"\x08\x02"]);
        assert_eq!(
            decode(&join),
            Ok(Published::Join {
                node: "n".into(),
                session: SessionId(3),
                user: "al|ice".into(),
                body: Bytes::from_static(b"\x08\x02"),
            })
        );
        let swept = encode(&[b"L", b"n", b"3", b"bob", b""]);
        assert_eq!(
            decode(&swept),
            Ok(Published::Leave {
                node: "n".into(),
                session: SessionId(3),
                user: "bob".into(),
                body: None,
            })
        );
    }

    #[test]
    fn operator_requests_and_answers_round_trip() {
        let request = encode(&[b"A", b"node-a", b"r-1", b"{\"op\":1}"]);
        assert_eq!(
            decode(&request),
            Ok(Published::Request {
                origin: "node-a".into(),
                id: "r-1".into(),
                body: Bytes::from_static(b"{\"op\":1}"),
            })
        );
        let answer = encode(&[b"R", b"node-b", b"r-1", b""]);
        assert_eq!(
            decode(&answer),
            Ok(Published::Answer {
                node: "node-b".into(),
                id: "r-1".into(),
                body: Bytes::new(),
            })
        );
        assert_eq!(
            decode(&encode(&[b"A", b"n", b"i"])),
            Err(PayloadError::UnknownShape)
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let cases: [(&[u8], PayloadError); 9] = [
            (b"", PayloadError::UnknownShape),
            (b"1:X", PayloadError::UnknownShape),
            (b"1:C2:12", PayloadError::UnknownShape),
            (b"5:C", PayloadError::Truncated),
            (b"x:C", PayloadError::BadLength),
            (b"1C", PayloadError::BadLength),
            (b"99999999999999999999999:C", PayloadError::BadLength),
            (
                b"1:J1:n1:x1:u0:",
                PayloadError::BadNumber, // session is not a number
            ),
            (b"1:L1:n1:31:\xff0:", PayloadError::BadText),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                decode(payload),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        let seven = encode(&[b"C", b"1", b"n", b"1", b"i", b"b", b"extra"]);
        assert_eq!(decode(&seven), Err(PayloadError::TooManyFields));
        let overflow = encode(&[b"C", b"18446744073709551616", b"n", b"1", b"i", b"b"]);
        assert_eq!(decode(&overflow), Err(PayloadError::BadNumber));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every 5-byte input over the format's own bytes: too short for any kind (the shortest,
        // a join, needs 10), so each must be refused, and none may panic.
        let alphabet = [b'0', b'1', b'5', b':', b'C', b'J', b'L', 0xff];
        for n in 0..alphabet.len().pow(5) {
            let mut input = Vec::new();
            let mut rest = n;
            for _ in 0..5 {
                input.push(alphabet[rest % alphabet.len()]);
                rest /= alphabet.len();
            }
            assert!(decode(&input).is_err(), "{input:?}");
        }
    }
}
