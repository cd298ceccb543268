//! Per-room limits: `[rooms."NAME"]` tables merged over `[limits]`, by exact name or by `*` glob
//! (exact names first, then the glob with the most literal characters). Built once per load by
//! [`Overrides::resolve`]; rooms read theirs through `Config::limits_for`.

use std::{collections::BTreeMap, sync::Arc};

use super::{RoomLimits, SessionConfig, validate};
use crate::names::RoomName;

/// Overrides merged with `[limits]`: exact names, and globs ordered most specific first.
#[derive(Debug, Clone, Default)]
pub(super) struct Overrides {
    exact: BTreeMap<String, Arc<RoomLimits>>,
    globs: Vec<(String, Arc<RoomLimits>)>,
    base: Arc<RoomLimits>,
}

impl Overrides {
    /// Merges each of `rooms` over `limits` and checks the result as a whole room's limits
    /// (against `session`, whose queue a replay must fit). An error names the key and says why.
    pub(super) fn resolve(
        limits: &RoomLimits,
        rooms: &BTreeMap<String, toml::Table>,
        session: &SessionConfig,
    ) -> Result<Overrides, (String, String)> {
        let base_table =
            toml::Table::try_from(limits).map_err(|e| ("limits".to_string(), e.to_string()))?;
        let mut resolved = Overrides {
            base: Arc::new(limits.clone()),
            ..Overrides::default()
        };
        for (name, table) in rooms {
            let prefix = format!("rooms.\"{name}\"");
            if name.contains('*') {
                check_glob(name).map_err(|m| (prefix.clone(), m.to_string()))?;
            } else {
                RoomName::parse(name).map_err(|e| (prefix.clone(), e.to_string()))?;
            }
            let mut merged = base_table.clone();
            merged.extend(table.clone());
            let limits: RoomLimits = serde_path_to_error::deserialize(toml::Value::Table(merged))
                .map_err(|e| {
                let key = format!("{prefix}.{}", e.path());
                (key, e.into_inner().message().to_string())
            })?;
            validate::room_limits(&limits, session, &prefix)?;
            let limits = Arc::new(limits);
            if name.contains('*') {
                resolved.globs.push((name.clone(), limits));
            } else {
                resolved.exact.insert(name.clone(), limits);
            }
        }
        // Most literal characters first: "support-vip-*" beats "support-*" beats "*".
        resolved
            .globs
            .sort_by(|(a, _), (b, _)| literal_len(b).cmp(&literal_len(a)).then(a.cmp(b)));
        Ok(resolved)
    }

    /// The limits of room `name`: its exact override, else the most specific matching glob,
    /// else `[limits]`.
    pub(super) fn for_room(&self, name: &str) -> Arc<RoomLimits> {
        if let Some(l) = self.exact.get(name) {
            return l.clone();
        }
        self.globs
            .iter()
            .find(|(pattern, _)| glob_match(pattern, name))
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| self.base.clone())
    }

    /// The largest `max_message_bytes` of any room, `[limits]` included.
    pub(super) fn largest_message_bytes(&self) -> usize {
        std::iter::once(&self.base)
            .chain(self.exact.values())
            .chain(self.globs.iter().map(|(_, l)| l))
            .map(|l| l.max_message_bytes)
            .fold(0, usize::max)
    }
}

fn check_glob(pattern: &str) -> Result<(), &'static str> {
    let literal: String = pattern.chars().filter(|c| *c != '*').collect();
    if !literal.is_empty() && RoomName::parse(&literal).is_err() {
        return Err("glob contains characters no room name may have");
    }
    Ok(())
}

fn literal_len(pattern: &str) -> usize {
    pattern.chars().filter(|c| *c != '*').count()
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // unwrap: split always yields at least one part.
    let first = parts.next().unwrap();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty(); // no '*' at all: exact comparison
    };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::{super::ENVELOPE_BYTES, super::parse_str, *};

    #[test]
    fn exact_names_win_over_globs_and_specific_globs_win() {
        let cfg = parse_str(
            "[rooms.\"support-*\"]\nmax_members = 5\n\
             [rooms.\"support-vip-*\"]\nmax_members = 3\n\
             [rooms.\"support-desk\"]\nmax_members = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.limits_for("support-desk").max_members, 7);
        assert_eq!(cfg.limits_for("support-vip-1").max_members, 3);
        assert_eq!(cfg.limits_for("support-1").max_members, 5);
        assert_eq!(cfg.limits_for("general").max_members, 10_000);
        // Unset keys of an override keep the [limits] value.
        assert_eq!(cfg.limits_for("support-1").history, 100);
    }

    #[test]
    fn the_largest_request_follows_the_largest_room() {
        let cfg = parse_str("[rooms.\"big\"]\nmax_message_bytes = 100000\n").unwrap();
        assert_eq!(cfg.largest_request_bytes(), 100_000 + ENVELOPE_BYTES);
    }

    #[test]
    fn max_frame_bytes_must_hold_the_largest_request() {
        let fits =
            "[server]\nmax_frame_bytes = 102048\n[rooms.\"big\"]\nmax_message_bytes = 100000\n";
        assert_eq!(parse_str(fits).unwrap().server.max_frame_bytes, 102_048);
        let short = fits.replace("102048", "102047");
        let err = parse_str(&short).unwrap_err();
        assert!(err.contains("server.max_frame_bytes"), "{err}");
        assert!(err.contains("102048"), "{err}");
        let err = parse_str("[server]\nmax_frame_bytes = 16777217\n").unwrap_err();
        assert!(err.contains("server.max_frame_bytes"), "{err}");
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("support-*", "support-1"));
        assert!(glob_match("support-*", "support-"));
        assert!(!glob_match("support-*", "suppor"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*-end", "the-end"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
