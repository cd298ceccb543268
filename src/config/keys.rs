//! Every configuration key and when a change to it takes effect on SIGHUP: the one list that
//! `Config::reloaded` keeps running values by, and that the README's Configuration table and
//! Signals section are checked against (tests below). A key missing here fails a test.

use super::Config;

/// When a changed key takes effect after a reload (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// At once, for open sessions and rooms too.
    Live,
    /// For sessions opened after the reload; open ones keep the value they started with.
    NewSessions,
    /// Read once at start: a change keeps the running value and is logged as needing a restart.
    Restart,
}

impl Reload {
    /// The word the README's Configuration table uses in its `reload` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Reload::Live => "live",
            Reload::NewSessions => "new sessions",
            Reload::Restart => "restart",
        }
    }
}

/// One key of the TOML schema.
#[derive(Debug)]
pub struct KeyInfo {
    /// The dotted path, `server.listen`. A key whose value is a table (`server.tls`, `rooms`)
    /// stands for everything under it.
    pub name: &'static str,
    pub reload: Reload,
    /// Whether two configs differ at this key.
    differs: fn(&Config, &Config) -> bool,
    /// Puts the first config's value into the second.
    restore: fn(&Config, &mut Config),
}

impl KeyInfo {
    pub(super) fn differs(&self, old: &Config, new: &Config) -> bool {
        (self.differs)(old, new)
    }

    pub(super) fn restore(&self, old: &Config, new: &mut Config) {
        (self.restore)(old, new)
    }
}

/// A [`KeyInfo`] from the field's path, so the name is spelled once and a path that is not a
/// field does not compile.
macro_rules! key {
    ($reload:ident, $first:ident $(. $rest:ident)*) => {
        KeyInfo {
            name: concat!(stringify!($first) $(, ".", stringify!($rest))*),
            reload: Reload::$reload,
            differs: |old, new| old.$first$(.$rest)* != new.$first$(.$rest)*,
            restore: |old, new| new.$first$(.$rest)* = old.$first$(.$rest)*.clone(),
        }
    };
}

/// Every key, by section. Restart-only keys are the ones read once when the server
/// is assembled (listeners, threads, transport, the token verifier, the Redis engine, logging);
/// everything read from the live config at the moment it is needed is `Live`.
pub const KEYS: &[KeyInfo] = &[
    key!(Restart, server.listen),
    // Each session takes it when it starts: a live change would split the default room's
    // members between two names.
    key!(Restart, server.default_room),
    key!(Live, server.max_sessions),
    key!(Live, server.max_rooms),
    // Every open room holds its share of the budget it was started with.
    key!(Restart, server.history_bytes_total),
    // The transport's frame check and the gRPC decoder limit are set when it starts.
    key!(Restart, server.max_frame_bytes),
    key!(Live, server.shutdown_grace_ms),
    key!(Restart, server.keepalive_interval_ms),
    key!(Restart, server.keepalive_timeout_ms),
    key!(Restart, server.max_concurrent_streams),
    key!(Restart, server.tcp_nodelay),
    key!(Restart, server.max_connections),
    key!(Restart, server.max_connections_per_ip),
    key!(Restart, server.handshake_timeout_ms),
    // The thread pools are built before the configuration is ever reloaded.
    key!(Restart, server.actor_threads),
    key!(Restart, server.io_threads),
    key!(Live, server.max_sessions_per_user),
    key!(Live, server.max_streams_per_ip),
    key!(Live, server.new_streams_per_ip_per_sec),
    key!(Live, server.new_streams_per_ip_burst),
    // The TLS acceptor is built from the files at start.
    key!(Restart, server.tls),
    // A session's queue is sized when its stream opens (the HTTP/2 send buffer derived from the
    // bytes is fixed at start).
    key!(NewSessions, session.outbound_queue),
    key!(NewSessions, session.outbound_queue_bytes),
    // Each open session's idle check reads the value every time it runs.
    key!(Live, session.idle_timeout_ms),
    key!(Live, session.max_rooms_per_session),
    key!(Live, session.requests_per_sec),
    key!(Live, session.requests_burst),
    key!(Live, limits.max_members),
    // Live up to `server.max_frame_bytes` - 2 KiB; see `Config::reloaded`.
    key!(Live, limits.max_message_bytes),
    key!(Live, limits.history),
    key!(Live, limits.history_bytes),
    key!(Live, limits.history_on_join),
    key!(Live, limits.rate_per_sec),
    key!(Live, limits.burst),
    key!(Live, limits.empty_room_ttl_ms),
    key!(Live, limits.max_members_listed),
    key!(Live, limits.read_only),
    key!(Live, limits.writers),
    // A room reads it at every CHAT; a change applies to the entries already remembered too.
    key!(Live, limits.dedup_window_ms),
    key!(Live, rooms),
    key!(Restart, auth.mode),
    key!(Restart, auth.secret),
    key!(Restart, auth.public_key_path),
    key!(Restart, auth.issuer),
    key!(Restart, auth.audience),
    // Read at every admin call, so a token can be rotated without a restart.
    key!(Live, admin.token),
    key!(Live, admin.max_failed_auth),
    key!(Live, admin.failed_auth_interval_ms),
    key!(Restart, cluster.engine),
    key!(Restart, cluster.redis_urls),
    key!(Restart, cluster.node_id),
    key!(Restart, cluster.presence_ttl_ms),
    key!(Restart, cluster.retention_secs),
    key!(Restart, metrics.listen),
    key!(Restart, log.level),
    key!(Restart, log.format),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const README: &str = include_str!("../../README.md");

    /// The entry `name` falls under: itself, or the table-valued key it is inside of.
    fn find(name: &str) -> Option<&'static KeyInfo> {
        KEYS.iter().find(|k| {
            name == k.name || (name.strip_prefix(k.name)).is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// Every key path of `value`, stopping at keys of the table (a table-valued key covers what
    /// is under it).
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        let serde_json::Value::Object(fields) = value else {
            out.push(prefix.to_string());
            return;
        };
        for (name, value) in fields {
            let path = match prefix {
                "" => name.clone(),
                _ => format!("{prefix}.{name}"),
            };
            if KEYS.iter().any(|k| k.name == path) {
                out.push(path);
            } else {
                walk(&path, value, out);
            }
        }
    }

    /// JSON rather than TOML: an unset `Option` is `null` there, so it is still walked.
    fn schema_keys() -> Vec<String> {
        // unwrap: every section serializes (plain data, string map keys).
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut keys = Vec::new();
        walk("", &value, &mut keys);
        keys
    }

    #[test]
    fn every_key_of_the_schema_is_in_the_table() {
        let missing: Vec<_> = schema_keys()
            .into_iter()
            .filter(|key| !KEYS.iter().any(|k| k.name == key))
            .collect();
        assert!(
            missing.is_empty(),
            "add these to config::KEYS with their reload behaviour: {missing:?}"
        );
    }

    #[test]
    fn every_key_of_the_table_is_in_the_schema_once() {
        let schema = schema_keys();
        let mut seen = BTreeSet::new();
        for key in KEYS {
            assert!(seen.insert(key.name), "{} is listed twice", key.name);
            assert!(
                schema.iter().any(|k| k == key.name),
                "{} is not a key",
                key.name
            );
        }
    }

    /// `(key, reload)` of every row of the README's Configuration table.
    fn readme_rows() -> Vec<(String, String)> {
        let start = README
            .find("\n## Configuration")
            .expect("a Configuration section");
        let end = start
            + README[start..]
                .find("\n## Operations")
                .expect("sections after it");
        README[start..end]
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|row| {
                let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
                let key = cells[0].trim().trim_matches('`').to_string();
                (key, cells[cells.len() - 1].trim().to_string())
            })
            .collect()
    }

    #[test]
    fn readme_configuration_table_has_every_key_with_its_reload() {
        let rows = readme_rows();
        for (key, reload) in &rows {
            let entry = find(key).unwrap_or_else(|| panic!("README lists {key}, not a key"));
            assert_eq!(
                reload,
                entry.reload.as_str(),
                "README's reload column for {key} disagrees with config::KEYS"
            );
        }
        for key in KEYS {
            assert!(
                rows.iter()
                    .any(|(row, _)| find(row).is_some_and(|k| k.name == key.name)),
                "README's Configuration table has no row for {}",
                key.name
            );
        }
    }

    /// The keys one Signals sub-bullet names: `a.b` is a key (or is under one), `[section]` is
    /// every key of that section; words without a dot are prose.
    fn named_keys(text: &str) -> BTreeSet<&'static str> {
        let mut keys = BTreeSet::new();
        for token in text.split('`').skip(1).step_by(2) {
            if let Some(section) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                let under: Vec<_> = KEYS
                    .iter()
                    .filter(|k| k.name == section || k.name.starts_with(&format!("{section}.")))
                    .map(|k| k.name)
                    .collect();
                assert!(
                    !under.is_empty(),
                    "README names section [{section}], which has no keys"
                );
                keys.extend(under);
            } else if token.contains('.') {
                let key = find(token).unwrap_or_else(|| panic!("README names {token}, not a key"));
                keys.insert(key.name);
            }
        }
        keys
    }

    #[test]
    fn readme_signals_section_lists_each_reload_kind_as_the_table_does() {
        let start = README.find("- `SIGHUP`").expect("a SIGHUP paragraph");
        let end = start + README[start..].find("- `SIGINT`").expect("SIGINT after it");
        let sighup = &README[start..end];
        for reload in [Reload::Live, Reload::NewSessions, Reload::Restart] {
            let marker = format!("  - **{}**", reload.as_str());
            let at = sighup
                .find(&marker)
                .unwrap_or_else(|| panic!("no {marker:?} line"));
            let rest = &sighup[at + marker.len()..];
            let text = &rest[..rest.find("\n  - ").unwrap_or(rest.len())];
            let expected: BTreeSet<_> = KEYS
                .iter()
                .filter(|k| k.reload == reload)
                .map(|k| k.name)
                .collect();
            let named = named_keys(text);
            assert!(
                named == expected,
                "README's SIGHUP list of {} keys disagrees with config::KEYS: \
                 only in the README {:?}, only in the table {:?}",
                reload.as_str(),
                named.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&named).collect::<Vec<_>>(),
            );
        }
    }
}
