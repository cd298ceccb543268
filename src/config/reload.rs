//! What a SIGHUP may change: [`Config::reloaded`] merges a freshly loaded config into the running
//! one, keeping the running value of every key that cannot change while the server runs.
//! `Hub::reload` applies the result; the server's SIGHUP loop logs what was kept.

use super::Config;

impl Config {
    /// The configuration to run after a reload to `new`: everything that can change live comes
    /// from `new` (room limits and overrides, session limits, max_sessions, shutdown grace); the
    /// rest keeps its running value, and its key is returned as needing a restart.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        fn keep<T: PartialEq + Clone>(
            old: &T,
            new: &mut T,
            key: &'static str,
            restart: &mut Vec<&'static str>,
        ) {
            if old != new {
                *new = old.clone();
                restart.push(key);
            }
        }
        let mut restart = Vec::new();
        let (old, r) = (&self.server, &mut restart);
        keep(&old.listen, &mut new.server.listen, "server.listen", r);
        keep(
            &old.default_room,
            &mut new.server.default_room,
            "server.default_room",
            r,
        );
        keep(
            &old.keepalive_interval_ms,
            &mut new.server.keepalive_interval_ms,
            "server.keepalive_interval_ms",
            r,
        );
        keep(
            &old.keepalive_timeout_ms,
            &mut new.server.keepalive_timeout_ms,
            "server.keepalive_timeout_ms",
            r,
        );
        keep(
            &old.max_concurrent_streams,
            &mut new.server.max_concurrent_streams,
            "server.max_concurrent_streams",
            r,
        );
        keep(
            &old.tcp_nodelay,
            &mut new.server.tcp_nodelay,
            "server.tcp_nodelay",
            r,
        );
        keep(
            &old.max_connections,
            &mut new.server.max_connections,
            "server.max_connections",
            r,
        );
        keep(
            &old.max_connections_per_ip,
            &mut new.server.max_connections_per_ip,
            "server.max_connections_per_ip",
            r,
        );
        keep(
            &old.handshake_timeout_ms,
            &mut new.server.handshake_timeout_ms,
            "server.handshake_timeout_ms",
            r,
        );
        // Every open room holds its share of the budget it was started with.
        keep(
            &old.history_bytes_total,
            &mut new.server.history_bytes_total,
            "server.history_bytes_total",
            r,
        );
        keep(&self.metrics, &mut new.metrics, "metrics", r);
        keep(&self.log, &mut new.log, "log", r);
        // The token verifier is built once at start; `[admin] token` is live (rotation).
        keep(&self.auth, &mut new.auth, "auth", r);
        keep(&self.cluster, &mut new.cluster, "cluster", r);
        // The gRPC decoder limit is fixed at start: room limits that would need a larger one
        // keep their running values as a whole.
        if new.max_frame_bytes() > self.max_frame_bytes() {
            new.limits = self.limits.clone();
            new.rooms = self.rooms.clone();
            new.resolved = self.resolved.clone();
            restart.push("max_message_bytes above the running maximum (the gRPC decoder limit)");
        }
        (new, restart)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_str;

    #[test]
    fn reload_takes_live_keys_and_reports_the_rest() {
        let running = parse_str("[limits]\nmax_members = 5\n").unwrap();
        let new = parse_str(
            "[server]\nlisten = \"127.0.0.1:1\"\nmax_sessions = 7\n\
             [limits]\nmax_members = 9\n[rooms.\"x\"]\nburst = 3\n\
             [admin]\nmax_failed_auth = 3\nfailed_auth_interval_ms = 60000\n",
        )
        .unwrap();
        let (effective, restart) = running.reloaded(new);
        assert_eq!(restart, vec!["server.listen"]);
        assert_eq!(effective.server.listen, running.server.listen);
        assert_eq!(effective.server.max_sessions, 7);
        assert_eq!(effective.admin.max_failed_auth, 3);
        assert_eq!(effective.admin.failed_auth_interval_ms, 60_000);
        assert_eq!(effective.limits_for("y").max_members, 9);
        assert_eq!(effective.limits_for("x").burst, 3);

        let new = parse_str("[server]\nmax_rooms = 3\nhistory_bytes_total = 1024\n").unwrap();
        let (reloaded, restart) = running.reloaded(new);
        assert_eq!(restart, vec!["server.history_bytes_total"]);
        assert_eq!(reloaded.server.max_rooms, 3, "max_rooms is live");
        assert_eq!(
            reloaded.server.history_bytes_total,
            running.server.history_bytes_total
        );
    }
}
