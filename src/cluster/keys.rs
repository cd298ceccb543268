//! Where a room lives in Redis: its key names and its shard. Both are part of the cluster's
//! on-Redis format, so every node of every version must compute the same names and the same
//! shard; changing either splits running clusters.

use crate::names::SessionId;

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3), over the bytes.
///
/// Chosen because it is fully specified in a few lines and has no seed: `std`'s hashers are
/// randomised per process or free to change between Rust releases, which would move rooms
/// between shards.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The shard (index into the configured Redis URLs) that holds `room`: `stable_hash % shards`.
/// `shards` must not be 0.
pub fn shard_for(room: &str, shards: usize) -> usize {
    // Both conversions are lossless: usize is at most 64 bits, and the remainder is < shards.
    (stable_hash(room.as_bytes()) % shards as u64) as usize
}

/// A room's Redis names (public for tests and operators). The `{room}` hash tag keeps them in one Redis Cluster slot as well, so
/// the scripts that touch several of them stay legal there.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// The room's last seq; 0 from the room's first JOIN until its first CHAT. Its presence
    /// marks the room's sequence: without it, the next JOIN or CHAT starts a new one.
    pub seq: String,
    /// The epoch of the room's current seq (16 hex digits), created with the seq key and
    /// expiring with it; never read without it.
    pub epoch: String,
    /// Stream of CHAT bodies; entry id `<seq>-1`, field `b`.
    pub log: String,
    /// Sorted set of `<node>|<session>|<user>`, score = expiry in Unix ms (Redis server time).
    pub presence: String,
    /// Pub/sub channel of the room's CHATs and presence changes.
    pub channel: String,
}

impl RoomKeys {
    pub fn new(room: &str) -> RoomKeys {
        RoomKeys {
            seq: format!("chat:{{{room}}}:seq"),
            epoch: format!("chat:{{{room}}}:epoch"),
            log: format!("chat:{{{room}}}:log"),
            presence: format!("chat:{{{room}}}:presence"),
            channel: room_channel(room),
        }
    }
}

pub(crate) fn room_channel(room: &str) -> String {
    format!("chat:{{{room}}}:ch")
}

/// The key remembering the CHAT `user` posted to `room` with `ref`, for the dedup window: the
/// user's byte length comes first, so no other (user, ref) pair spells the same key.
pub fn dedup_key(room: &str, user: &str, r#ref: &str) -> String {
    format!(
        "chat:{{{room}}}:ref:{}:{user}{ref}",
        user.len(),
        r#ref = r#ref
    )
}

/// Sorted set of a user's live sessions over all nodes, `<node>|<session>` scored by expiry (Unix
/// ms, Redis time), for `max_sessions_per_user` in cluster mode.
pub(crate) fn user_sessions_key(user: &str) -> String {
    format!("chat:user:{{{user}}}:sessions")
}

/// SCAN pattern of every room's presence key.
pub(crate) const PRESENCE_PATTERN: &str = "chat:{*}:presence";

/// The room whose presence key this is (the inverse of [`RoomKeys::new`]'s `presence`).
pub(crate) fn room_of_presence_key(key: &str) -> Option<&str> {
    key.strip_prefix("chat:{")?.strip_suffix("}:presence")
}

/// The channel every node listens on for operator requests (on shard 0).
pub(crate) const OPERATOR_CHANNEL: &str = "chat:admin";

/// The channel on which `node` receives the answers to its operator requests (on shard 0).
pub(crate) fn answer_channel(node: &str) -> String {
    format!("chat:admin:{node}")
}

/// A presence set member, as the scripts build it (this Rust copy is the reference for tests).
/// Node ids never contain `|` (checked when the engine is built) and the
/// session is digits, so the user name, which may contain `|`, is everything after the second `|`.
#[cfg(test)]
pub(crate) fn presence_member(node: &str, session: SessionId, user: &str) -> String {
    format!("{node}|{}|{user}", session.0)
}

/// The inverse of [`presence_member`]; `None` for a member some other writer put there.
pub(crate) fn parse_presence_member(member: &str) -> Option<(&str, SessionId, &str)> {
    let (node, rest) = member.split_once('|')?;
    let (session, user) = rest.split_once('|')?;
    let session = session.parse().ok()?;
    Some((node, SessionId(session), user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a_64() {
        // Reference values of FNV-1a 64 (from its definition; also its published test vectors).
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn room_to_shard_mapping_never_changes() {
        // Computed once from the definition above; a change here moves live rooms between shards.
        let expected = [
            ("lobby", 3, 1),
            ("general", 2, 1),
            ("ops", 5, 3),
            ("room-1", 4, 0),
        ];
        for (room, shards, shard) in expected {
            assert_eq!(
                shard_for(room, shards),
                shard,
                "{room} over {shards} shards"
            );
        }
        assert_eq!(shard_for("anything", 1), 0);
    }

    #[test]
    fn rooms_spread_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("room-{i}"), 4)] += 1;
        }
        for (shard, &count) in counts.iter().enumerate() {
            assert!(
                (800..=1200).contains(&count),
                "shard {shard} got {count} of 4000"
            );
        }
    }

    #[test]
    fn key_names_share_the_room_hash_tag() {
        let keys = RoomKeys::new("lobby");
        assert_eq!(keys.seq, "chat:{lobby}:seq");
        assert_eq!(keys.epoch, "chat:{lobby}:epoch");
        assert_eq!(dedup_key("lobby", "ada", "r1"), "chat:{lobby}:ref:3:adar1");
        assert_ne!(
            dedup_key("lobby", "ad", "ar1"),
            dedup_key("lobby", "ada", "r1")
        );
        assert_eq!(keys.log, "chat:{lobby}:log");
        assert_eq!(keys.presence, "chat:{lobby}:presence");
        assert_eq!(keys.channel, "chat:{lobby}:ch");
        assert_eq!(room_of_presence_key(&keys.presence), Some("lobby"));
        let odd = RoomKeys::new("a}:presence*");
        assert_eq!(room_of_presence_key(&odd.presence), Some("a}:presence*"));
        assert_eq!(room_of_presence_key(&keys.seq), None);
        // Operator channels carry no hash tag, so no room's channel can be one of them.
        assert!(!OPERATOR_CHANNEL.contains('{') && !answer_channel("n").contains('{'));
    }

    #[test]
    fn presence_members_round_trip_with_a_pipe_in_the_user() {
        let member = presence_member("node-a", SessionId(42), "al|ice");
        assert_eq!(member, "node-a|42|al|ice");
        assert_eq!(
            parse_presence_member(&member),
            Some(("node-a", SessionId(42), "al|ice"))
        );
        assert_eq!(parse_presence_member("node-a|x|bob"), None);
        assert_eq!(parse_presence_member("garbage"), None);
    }
}
