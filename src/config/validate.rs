//! Values a config's types allow but the server cannot run with: zero sizes, rates that are not
//! numbers, histories that would not fit a joiner's queue, unreadable TLS files. Called by
//! `Config::resolve`, so a config that exists has passed here (the server never panics on one).

use super::decoding_key;
use super::{
    ClusterEngine, Config, MAX_MESSAGE_BYTES_CEILING, MIN_ADMIN_TOKEN_CHARS, RoomLimits,
    SessionConfig,
};
use crate::names::RoomName;

/// The longest `dedup_window_ms` accepted.
const MAX_DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Checks what a section's types cannot: ranges, and keys that depend on each other. An error
/// names the key and says why.
pub(super) fn config(cfg: &Config) -> Result<(), (String, String)> {
    let fail = |key: &str, msg: String| Err((key.to_string(), msg));
    if cfg.server.max_sessions == 0 {
        return fail("server.max_sessions", "must be at least 1".into());
    }
    if let Err(e) = RoomName::parse(&cfg.server.default_room) {
        return fail("server.default_room", e.to_string());
    }
    if cfg.server.keepalive_interval_ms > 0 && cfg.server.keepalive_timeout_ms == 0 {
        return fail(
            "server.keepalive_timeout_ms",
            "must be above 0 when keepalive is on".into(),
        );
    }
    let rate = cfg.server.new_streams_per_ip_per_sec;
    if !(rate.is_finite() && rate >= 0.0) {
        return fail(
            "server.new_streams_per_ip_per_sec",
            "must be 0 (off) or above".into(),
        );
    }
    if rate > 0.0 && cfg.server.new_streams_per_ip_burst == 0 {
        return fail(
            "server.new_streams_per_ip_burst",
            "must be at least 1".into(),
        );
    }
    if let Err(e) = decoding_key(&cfg.auth) {
        return fail("auth", e);
    }
    if cfg.cluster.engine == ClusterEngine::Redis {
        if cfg.cluster.redis_urls.is_empty() {
            return fail("cluster.redis_urls", "redis needs at least one URL".into());
        }
        if let Some(url) = cfg
            .cluster
            .redis_urls
            .iter()
            .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return fail(
                "cluster.redis_urls",
                format!("{url:?} is not a redis:// or rediss:// URL"),
            );
        }
        if cfg.cluster.presence_ttl_ms < 300 {
            return fail("cluster.presence_ttl_ms", "must be at least 300".into());
        }
        // At least a minute: shorter would let a busy room's seq expire between two CHATs.
        if !(60..=10 * 365 * 24 * 3600).contains(&cfg.cluster.retention_secs) {
            return fail(
                "cluster.retention_secs",
                "must be between 60 and 315360000 (ten years)".into(),
            );
        }
    }
    if cfg.cluster.node_id.contains('|') {
        return fail("cluster.node_id", "must not contain `|`".into());
    }
    let token = &cfg.admin.token;
    if !token.is_empty() && !token.chars().all(|c| c.is_ascii_graphic()) {
        return fail(
            "admin.token",
            "must be printable ASCII without spaces (it travels in a header)".into(),
        );
    }
    if !token.is_empty() && token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return fail(
            "admin.token",
            format!("must be empty (admin API off) or at least {MIN_ADMIN_TOKEN_CHARS} characters"),
        );
    }
    // At least 100 ms, or the log limit means little; at most an hour, so a typo cannot
    // lock operators out for days.
    if !(100..=3_600_000).contains(&cfg.admin.failed_auth_interval_ms) {
        return fail(
            "admin.failed_auth_interval_ms",
            "must be between 100 and 3600000 (an hour)".into(),
        );
    }
    if let Some(tls) = &cfg.server.tls {
        let files = [
            ("server.tls.cert_path", Some(&tls.cert_path)),
            ("server.tls.key_path", Some(&tls.key_path)),
            ("server.tls.client_ca_path", tls.client_ca_path.as_ref()),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && let Err(e) = std::fs::read(path)
            {
                return fail(key, format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    if cfg.server.max_concurrent_streams == 0 {
        return fail("server.max_concurrent_streams", "must be at least 1".into());
    }
    if !cfg.metrics.listen.is_empty() && cfg.metrics.addr().is_none() {
        return fail(
            "metrics.listen",
            format!(
                "`{}` is not host:port (or \"\" for off)",
                cfg.metrics.listen
            ),
        );
    }
    if tracing_subscriber::EnvFilter::try_new(&cfg.log.level).is_err() {
        return fail(
            "log.level",
            format!("`{}` is not a log filter", cfg.log.level),
        );
    }
    if cfg.session.outbound_queue < 2 {
        return fail("session.outbound_queue", "must be at least 2".into());
    }
    if cfg.session.outbound_queue_bytes < 16 * 1024 {
        return fail(
            "session.outbound_queue_bytes",
            "must be at least 16384".into(),
        );
    }
    if cfg.server.max_connections == 0 {
        return fail("server.max_connections", "must be at least 1".into());
    }
    if cfg.server.handshake_timeout_ms == 0 {
        return fail("server.handshake_timeout_ms", "must be at least 1".into());
    }
    if cfg.server.max_rooms == 0 {
        return fail("server.max_rooms", "must be at least 1".into());
    }
    if cfg.session.max_rooms_per_session == 0 {
        return fail("session.max_rooms_per_session", "must be at least 1".into());
    }
    let rate = cfg.session.requests_per_sec;
    if !(rate.is_finite() && rate >= 0.0) {
        return fail(
            "session.requests_per_sec",
            "must be 0 (off) or above".into(),
        );
    }
    if rate > 0.0 && cfg.session.requests_burst == 0 {
        return fail("session.requests_burst", "must be at least 1".into());
    }
    room_limits(&cfg.limits, &cfg.session, "limits")
}

/// Checks one room's limits, `[limits]` or a merged `[rooms."NAME"]` (`prefix` names it in errors).
pub(super) fn room_limits(
    l: &RoomLimits,
    session: &SessionConfig,
    prefix: &str,
) -> Result<(), (String, String)> {
    let key = |k: &str| format!("{prefix}.{k}");
    if l.max_members == 0 {
        return Err((key("max_members"), "must be at least 1".into()));
    }
    if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
        return Err((
            key("max_message_bytes"),
            format!("must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"),
        ));
    }
    if l.history_on_join > l.history {
        return Err((
            key("history_on_join"),
            format!("must not exceed history ({})", l.history),
        ));
    }
    // A JOINED plus a full replay must fit the joiner's queue, or the joiner would be
    // dropped as a slow consumer by its own replay.
    if l.history >= session.outbound_queue {
        return Err((
            key("history"),
            format!(
                "must be below session.outbound_queue ({}) so a full replay fits the queue",
                session.outbound_queue
            ),
        ));
    }
    // The same in bytes: a full replay must fit a fresh session's byte-bounded queue, with the
    // other half left for the live traffic that arrives meanwhile.
    if l.history_bytes > session.outbound_queue_bytes / 2 {
        return Err((
            key("history_bytes"),
            format!(
                "must be at most half of session.outbound_queue_bytes ({}) so a full replay fits the queue",
                session.outbound_queue_bytes / 2
            ),
        ));
    }
    if !(l.rate_per_sec.is_finite() && l.rate_per_sec > 0.0) {
        return Err((key("rate_per_sec"), "must be a number above 0".into()));
    }
    if l.burst == 0 {
        return Err((key("burst"), "must be at least 1".into()));
    }
    if l.max_members_listed == 0 {
        return Err((key("max_members_listed"), "must be at least 1".into()));
    }
    // A resend comes within seconds of a reconnect; a day bounds what Redis is asked to keep
    // (its key's TTL) far inside what it accepts.
    if l.dedup_window_ms > MAX_DEDUP_WINDOW_MS {
        return Err((
            key("dedup_window_ms"),
            format!("must be at most {MAX_DEDUP_WINDOW_MS} (a day)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse_str;

    #[test]
    fn impossible_values_are_refused() {
        for (text, key) in [
            ("[limits]\nmax_members = 0", "limits.max_members"),
            (
                "[limits]\nhistory = 5\nhistory_on_join = 6",
                "limits.history_on_join",
            ),
            ("[limits]\nrate_per_sec = 0", "limits.rate_per_sec"),
            ("[limits]\nburst = 0", "limits.burst"),
            (
                "[limits]\nmax_message_bytes = 0",
                "limits.max_message_bytes",
            ),
            ("[session]\noutbound_queue = 50", "limits.history"),
            ("[server]\ndefault_room = \"a b\"", "server.default_room"),
            ("[server]\nmax_sessions = 0", "server.max_sessions"),
            ("[server]\nmax_rooms = 0", "server.max_rooms"),
            ("[metrics]\nlisten = \"nowhere\"", "metrics.listen"),
            ("[log]\nformat = \"xml\"", "log.format"),
            (
                "[server.tls]\ncert_path = \"/nonexistent.pem\"\nkey_path = \"/nonexistent.key\"",
                "server.tls.cert_path",
            ),
            ("[log]\nlevel = \"[[\"", "log.level"),
            ("[rooms.\"x\"]\nmax_members = 0", "rooms.\"x\".max_members"),
            ("[rooms.\"x\"]\nfoo = 1", "rooms.\"x\".foo"),
            (
                "[rooms.\"x\"]\ndedup_window_ms = 86400001",
                "rooms.\"x\".dedup_window_ms",
            ),
            (
                "[cluster]\nengine = \"redis\"\npresence_ttl_ms = 299",
                "cluster.presence_ttl_ms",
            ),
            (
                "[cluster]\nengine = \"redis\"\nretention_secs = 59",
                "cluster.retention_secs",
            ),
        ] {
            let err = parse_str(text).unwrap_err();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn history_bytes_must_fit_half_the_outbound_queue() {
        // Defaults: outbound_queue_bytes 262144, so at most 131072 (the default itself).
        let cfg = parse_str("[limits]\nhistory_bytes = 131072\n").unwrap();
        assert_eq!(cfg.limits_for("any").history_bytes, 131_072);
        for (text, key) in [
            ("[limits]\nhistory_bytes = 131073", "limits.history_bytes"),
            (
                "[rooms.\"big\"]\nhistory_bytes = 200000",
                "rooms.\"big\".history_bytes",
            ),
            (
                "[session]\noutbound_queue_bytes = 65536",
                "limits.history_bytes",
            ),
        ] {
            let err = parse_str(text).unwrap_err();
            assert!(err.contains(key), "{text:?} gave {err}");
            assert!(err.contains("outbound_queue_bytes"), "{text:?} gave {err}");
        }
        // A larger queue makes room for a larger history.
        let cfg = parse_str(
            "[session]\noutbound_queue_bytes = 1048576\n[rooms.\"big\"]\nhistory_bytes = 524288\n",
        )
        .unwrap();
        assert_eq!(cfg.limits_for("big").history_bytes, 524_288);
    }
}
