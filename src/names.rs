//! Validated identifiers: session ids, room names and user names. Names are checked once at the
//! edge and then shared as `Arc<str>`, so a broadcast or a member list never copies them.

use std::{fmt, sync::Arc};

use crate::error::ChatError;

/// Longest room name in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Longest user name in characters.
pub const MAX_USER_CHARS: usize = 64;
/// The author of operator announcements; no client may take this name.
pub const SYSTEM_USER: &str = "system";

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
        } else if name.trim().eq_ignore_ascii_case(SYSTEM_USER) {
            Some("user name \"system\" is reserved for server announcements")
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
}
