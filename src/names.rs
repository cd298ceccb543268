//! Validated identifiers: session ids, room names, user names and room epochs. Names are checked
//! once at the edge and then shared as `Arc<str>`, so a broadcast or a member list never copies
//! them.

use std::{
    fmt,
    sync::{Arc, LazyLock},
};

use crate::error::ChatError;

/// Longest room name in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Longest user name in characters.
pub const MAX_USER_CHARS: usize = 64;
/// The author of operator announcements; no client may take this name.
pub const SYSTEM_USER: &str = "system";
/// Names no client may take, nor anything that looks like them.
pub const RESERVED_USERS: &[&str] = &[SYSTEM_USER];

/// The confusable keys of [`RESERVED_USERS`], computed once.
static RESERVED_KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    RESERVED_USERS
        .iter()
        .map(|name| confusable_key(name))
        .collect()
});

/// What a name looks like, for telling whether two names can be mistaken for each other: the
/// UTS #39 skeleton (which maps look-alikes such as Cyrillic `ѕ` to Latin `s` and drops invisible
/// characters), case-folded and skeletonised again, because the skeleton alone keeps case and
/// `System` must collide with `system` too. Surrounding whitespace does not count either.
fn confusable_key(name: &str) -> String {
    let folded: String = unicode_security::skeleton(name)
        .flat_map(char::to_lowercase)
        .collect();
    let key: String = unicode_security::skeleton(&folded).collect();
    key.trim().to_string()
}

/// The reserved name `name` is, or looks like, if any.
pub fn reserved_look_alike(name: &str) -> Option<&'static str> {
    let key = confusable_key(name);
    RESERVED_KEYS
        .iter()
        .position(|reserved| *reserved == key)
        .map(|i| RESERVED_USERS[i])
}

/// Longest epoch in bytes, as the wire contract promises clients.
pub const EPOCH_BYTES: usize = 16;

/// A fresh epoch: an id of one incarnation of a room's sequence, 16 hex digits of random bits
/// (64 bits: two incarnations of one room never share one in practice).
pub fn new_epoch() -> String {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    // XOR so the v4 version and variant bits, fixed in each half, are covered by random ones.
    format!("{:016x}", high ^ low)
}

/// Process-unique id of one stream's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A room name: 1–128 bytes, no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub fn parse(name: &str) -> Result<RoomName, ChatError> {
        let reason = if name.is_empty() {
            Some("room name is empty")
        } else if name.len() > MAX_ROOM_BYTES {
            Some("room name is longer than 128 bytes")
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("room name contains whitespace or control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ChatError::InvalidRoom(reason)),
            None => Ok(RoomName(name.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user name: 1–64 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(Arc<str>);

impl UserName {
    pub fn parse(name: &str) -> Result<UserName, ChatError> {
        let reason = if name.trim().is_empty() {
            Some("user name is empty or blank")
        } else if name.chars().count() > MAX_USER_CHARS {
            Some("user name is longer than 64 characters")
        } else if name.chars().any(char::is_control) {
            Some("user name contains control characters")
        } else if reserved_look_alike(name).is_some() {
            Some("user name is, or looks like, one reserved for the server (\"system\")")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ChatError::InvalidUser(reason)),
            None => Ok(UserName(name.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_eq!(a.len(), EPOCH_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn room_names_at_and_past_the_bounds() {
        assert!(RoomName::parse("a").is_ok());
        assert!(RoomName::parse(&"r".repeat(128)).is_ok());
        assert!(RoomName::parse(&"r".repeat(129)).is_err());
        // 128 bytes of two-byte characters is fine, 130 is not: the bound is in bytes.
        assert!(RoomName::parse(&"é".repeat(64)).is_ok());
        assert!(RoomName::parse(&"é".repeat(65)).is_err());
        for bad in ["", "a b", "tab\there", "nl\n", "nul\0", "nbsp\u{a0}x"] {
            let err = RoomName::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_room", "{bad:?}");
        }
        assert!(RoomName::parse("support-*#ünï").is_ok());
    }

    #[test]
    fn user_names_at_and_past_the_bounds() {
        assert!(UserName::parse("x").is_ok());
        assert!(UserName::parse(&"ü".repeat(64)).is_ok());
        assert!(UserName::parse(&"ü".repeat(65)).is_err());
        assert!(UserName::parse("Ada Lovelace").is_ok());
        for bad in ["", "   ", "\t", "bell\u{7}", "line\nbreak"] {
            let err = UserName::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_user", "{bad:?}");
        }
    }

    #[test]
    fn reserved_names_and_their_look_alikes_are_refused() {
        for bad in [
            "system",
            "System",
            " SYSTEM ",
            // Cyrillic dze, u and ie among Latin letters.
            "\u{455}\u{443}\u{455}t\u{435}m",
            // Upper-case Cyrillic dze, U, ie and em.
            "\u{405}\u{423}\u{405}T\u{415}\u{41c}",
            // A zero-width space inside: invisible, so it must not make the name different.
            "sys\u{200b}tem",
            // Mathematical bold letters and full-width letters.
            "\u{1d42c}\u{1d432}\u{1d42c}\u{1d42d}\u{1d41e}\u{1d426}",
            "\u{ff53}\u{ff59}\u{ff53}\u{ff54}\u{ff45}\u{ff4d}",
            // `rn` reads as `m`.
            "systern",
        ] {
            assert_eq!(reserved_look_alike(bad), Some(SYSTEM_USER), "{bad:?}");
            let err = UserName::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_user", "{bad:?}");
        }
        // Names that merely contain it, or differ in a letter one can see, are fine.
        for fine in ["systems", "system-admin", "sysadmin", "Ѕветлана", "ѕуѕ"] {
            assert_eq!(reserved_look_alike(fine), None, "{fine:?}");
            assert!(UserName::parse(fine).is_ok(), "{fine:?}");
        }
    }
}
