//! What the generator puts on the wire: the requests it sends (JOIN, CHAT, PING) and the marker
//! header every generated CHAT starts with, which carries its send time. Send and receive times
//! come from one anchored [`Clock`], so latencies are immune to wall-clock steps mid-run.

use std::{
    fmt::Write as _,
    sync::LazyLock,
    time::{SystemTime, UNIX_EPOCH},
};

use chatrooms::proto::{Kind, Message};
use tokio::time::Instant;

/// `ref` of every JOIN, so an ERROR answering it is told apart from one answering a CHAT.
pub const JOIN_REF: &str = "join";
/// Length of the header every generated CHAT starts with: `{W|M}{step:02}|{unix nanos:019}|`.
pub const HEADER_LEN: usize = 24;

/// Unix time read through the monotonic clock. Send and receive times are both taken in this one
/// process, so anchoring the wall clock once keeps latencies immune to clock steps mid-run.
pub struct Clock {
    anchor: std::time::Instant,
    anchor_unix_nanos: u64,
}

pub static CLOCK: LazyLock<Clock> = LazyLock::new(|| Clock {
    anchor: std::time::Instant::now(),
    anchor_unix_nanos: SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
});

pub fn unix_nanos(at: Instant) -> u64 {
    let since = at.into_std().saturating_duration_since(CLOCK.anchor);
    CLOCK.anchor_unix_nanos + u64::try_from(since.as_nanos()).unwrap_or(u64::MAX / 2)
}

/// What a generated CHAT carries: whether it belongs to a measured window (`M`) or a warm-up
/// (`W`), which window (`--find-max` step), and when it was due to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub measured: bool,
    pub step: u8,
    pub sent_nanos: u64,
}

impl Marker {
    /// The CHAT content: the header padded with `x` to `size` bytes (`size >= HEADER_LEN`).
    pub fn content(self, size: usize) -> String {
        let mut content = String::with_capacity(size.max(HEADER_LEN));
        let phase = if self.measured { 'M' } else { 'W' };
        // unwrap: formatting into a String cannot fail
        write!(content, "{phase}{:02}|{:019}|", self.step, self.sent_nanos).unwrap();
        content.extend(std::iter::repeat_n('x', size.saturating_sub(HEADER_LEN)));
        content
    }

    pub fn parse(content: &str) -> Option<Marker> {
        let bytes = content.as_bytes();
        if bytes.len() < HEADER_LEN || bytes[3] != b'|' || bytes[23] != b'|' {
            return None;
        }
        let measured = match bytes[0] {
            b'M' => true,
            b'W' => false,
            _ => return None,
        };
        let step = u8::try_from(ascii_number(&bytes[1..3])?).ok()?;
        Some(Marker {
            measured,
            step,
            sent_nanos: ascii_number(&bytes[4..23])?,
        })
    }
}

/// Decimal digits to a number (at most 19 digits, so it cannot overflow a u64).
fn ascii_number(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// The first request of every stream: it names the session (`user`), as the server requires.
pub fn join_request(index: usize, room: &str) -> Message {
    join_as(&format!("u{index}"), room)
}

/// A stream's first request, naming the session `user`.
pub fn join_as(user: &str, room: &str) -> Message {
    Message {
        kind: Kind::Join.into(),
        user: user.to_owned(),
        room: room.to_owned(),
        r#ref: JOIN_REF.to_owned(),
        ..Message::default()
    }
}

pub fn chat_request(room: &str, content: String) -> Message {
    Message {
        kind: Kind::Chat.into(),
        room: room.to_owned(),
        content,
        ..Message::default()
    }
}

pub fn ping_request() -> Message {
    Message {
        kind: Kind::Ping.into(),
        ..Message::default()
    }
}

/// A PING whose PONG echoes `r#ref`, so its round trip can be timed.
pub fn ping_with_ref(r#ref: String) -> Message {
    Message {
        r#ref,
        ..ping_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_pads() {
        let marker = Marker {
            measured: true,
            step: 7,
            sent_nanos: 1_712_345_678_901_234_567,
        };
        let content = marker.content(64);
        assert_eq!(content.len(), 64);
        assert!(content.starts_with("M07|1712345678901234567|xxx"));
        assert_eq!(Marker::parse(&content), Some(marker));
        let warm = Marker {
            measured: false,
            step: 0,
            sent_nanos: 5,
        };
        assert_eq!(warm.content(HEADER_LEN), "W00|0000000000000000005|");
        assert_eq!(Marker::parse(&warm.content(HEADER_LEN)), Some(warm));
        for bad in [
            "",
            "hello",
            "X00|0000000000000000005|",
            "M0a|0000000000000000005|",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad}");
        }
    }
}
