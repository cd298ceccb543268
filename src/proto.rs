//! The generated `chat.v1` types (chat and admin) and the few constructors and encoders the
//! actors need. Generated code stays behind this module. (The chat server is not generated:
//! see `edge::route`.)

use bytes::Bytes;
use prost::Message as _;

#[allow(clippy::all, missing_docs, dead_code)]
mod generated {
    tonic::include_proto!("chat.v1");
}

pub use generated::{Kind, Message, chat_service_client};

/// `chat.v1.AdminService`: its messages, client and server.
pub mod admin {
    pub use super::generated::{
        AnnounceRequest, AnnounceResponse, CloseRoomRequest, CloseRoomResponse, GetRoomRequest,
        GetRoomResponse, KickMode, KickRequest, KickResponse, ListRoomsRequest, ListRoomsResponse,
        RoomMember, RoomSummary, admin_service_client, admin_service_server, kick_request,
    };
}

/// Descriptors of `chat.proto` and `admin.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));

/// Field numbers appended to an already-encoded message (see [`with_ref`] and [`as_replay`]).
const SEQ_FIELD: u32 = 7;
const REF_FIELD: u32 = 8;
const REPLAY_FIELD: u32 = 12;

/// Server time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// `live` with `ref` set. Protobuf parsers take the last value of a repeated scalar field and
/// the encoding of `live` never carries `ref`, so appending the field is the same as encoding a
/// copy with it set, without re-encoding the whole message.
pub fn with_ref(live: &Bytes, r#ref: &str) -> Bytes {
    if r#ref.is_empty() {
        return live.clone();
    }
    let mut buf = Vec::with_capacity(live.len() + r#ref.len() + 4);
    buf.extend_from_slice(live);
    prost::encoding::string::encode(REF_FIELD, &r#ref.to_string(), &mut buf);
    Bytes::from(buf)
}

/// A CHAT encoded without its seq (cluster mode: Redis assigns it) with `seq` set, by the same
/// append as [`with_ref`].
pub fn with_seq(body: &[u8], seq: u64) -> Bytes {
    let mut buf = Vec::with_capacity(body.len() + 11);
    buf.extend_from_slice(body);
    prost::encoding::uint64::encode(SEQ_FIELD, &seq, &mut buf);
    Bytes::from(buf)
}

/// `live` marked as history being replayed (same trick as [`with_ref`]).
pub fn as_replay(live: &Bytes) -> Bytes {
    let mut buf = Vec::with_capacity(live.len() + 2);
    buf.extend_from_slice(live);
    prost::encoding::bool::encode(REPLAY_FIELD, &true, &mut buf);
    Bytes::from(buf)
}

impl Message {
    pub fn error(code: &str, reason: String, room: &str, r#ref: String) -> Message {
        Message {
            kind: Kind::Error.into(),
            code: code.to_string(),
            content: reason,
            room: room.to_string(),
            r#ref,
            timestamp: now_ms(),
            ..Message::default()
        }
    }

    /// A server message of `kind` about `room`, stamped with the current time.
    pub fn event(kind: Kind, room: &str, user: &str) -> Message {
        Message {
            kind: kind.into(),
            room: room.to_string(),
            user: user.to_string(),
            timestamp: now_ms(),
            ..Message::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Message {
        Message {
            kind: Kind::Chat.into(),
            user: "ada".into(),
            content: "hello".into(),
            room: "lobby".into(),
            seq: 7,
            id: "0190-x".into(),
            timestamp: 1_700_000_000_000,
            ..Message::default()
        }
    }

    #[test]
    fn appended_ref_decodes_as_the_ref_field() {
        let live = encode(&chat());
        let decoded = Message::decode(with_ref(&live, "r-42")).unwrap();
        assert_eq!(
            decoded,
            Message {
                r#ref: "r-42".into(),
                ..chat()
            }
        );
        assert_eq!(with_ref(&live, ""), live);
    }

    #[test]
    fn appended_seq_decodes_as_the_seq_field() {
        let without = encode(&Message { seq: 0, ..chat() });
        assert_eq!(Message::decode(with_seq(&without, 7)).unwrap(), chat());
    }

    #[test]
    fn appended_replay_flag_decodes_and_keeps_the_original() {
        let decoded = Message::decode(as_replay(&encode(&chat()))).unwrap();
        assert_eq!(
            decoded,
            Message {
                replay: true,
                ..chat()
            }
        );
    }
}
