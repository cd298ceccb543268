//! What a SIGHUP may change: [`Config::reloaded`] merges a freshly loaded config into the running
//! one, keeping the running value of every restart-only key in [`KEYS`]. `Hub::reload` applies
//! the result; the server's SIGHUP loop logs what was kept.

use super::{Config, KEYS, KeyInfo, Reload};

impl Config {
    /// The configuration to run after a reload to `new`: every key of [`KEYS`] that is not
    /// [`Reload::Restart`] comes from `new`; the restart-only ones keep their running value, and
    /// those that changed are returned as needing a restart.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        let mut restart = Vec::new();
        for key in KEYS.iter().filter(|k| k.reload == Reload::Restart) {
            if key.differs(self, &new) {
                key.restore(self, &mut new);
                restart.push(key.name);
            }
        }
        // `server.max_frame_bytes` is fixed at start: room limits whose requests would not fit
        // it keep their running values as a whole.
        if new.largest_request_bytes() > self.server.max_frame_bytes {
            new.limits = self.limits.clone();
            new.rooms = self.rooms.clone();
            new.resolved = self.resolved.clone();
            restart.push("max_message_bytes above server.max_frame_bytes - 2048");
        }
        (new, restart)
    }

    /// The keys whose value differs in `new`, in [`KEYS`] order.
    pub fn changed(&self, new: &Config) -> Vec<&'static KeyInfo> {
        KEYS.iter().filter(|k| k.differs(self, new)).collect()
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

    /// These three were neither kept nor reported: a reload silently claimed to run a value the
    /// server was not running.
    #[test]
    fn threads_and_tls_are_kept_and_reported() {
        let running = parse_str("").unwrap();
        let mut new = parse_str("[server]\nactor_threads = 3\nio_threads = 5\n").unwrap();
        new.server.tls = Some(super::super::TlsConfig {
            cert_path: "cert.pem".into(),
            key_path: "key.pem".into(),
            client_ca_path: None,
        });
        let (effective, restart) = running.reloaded(new);
        assert_eq!(
            restart,
            vec!["server.actor_threads", "server.io_threads", "server.tls"]
        );
        assert_eq!(effective.server.actor_threads, 0);
        assert_eq!(effective.server.io_threads, 0);
        assert_eq!(effective.server.tls, None);
    }

    /// Sessions opened after the reload get the new queue; the key is not a restart-only one.
    #[test]
    fn outbound_queue_and_idle_timeout_are_taken() {
        let running = parse_str("").unwrap();
        let new = parse_str(
            "[session]\noutbound_queue = 2048\noutbound_queue_bytes = 524288\nidle_timeout_ms = 5000\n",
        )
        .unwrap();
        let changed: Vec<_> = running.changed(&new).iter().map(|k| k.name).collect();
        assert_eq!(
            changed,
            vec![
                "session.outbound_queue",
                "session.outbound_queue_bytes",
                "session.idle_timeout_ms"
            ]
        );
        let (effective, restart) = running.reloaded(new);
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(effective.session.outbound_queue, 2048);
        assert_eq!(effective.session.outbound_queue_bytes, 524_288);
        assert_eq!(effective.session.idle_timeout_ms, 5000);
    }

    #[test]
    fn room_limits_over_the_frame_limit_keep_the_running_ones_whole() {
        let running = parse_str("[server]\nmax_frame_bytes = 65536\n").unwrap();
        let new = parse_str("[limits]\nburst = 3\n[rooms.\"big\"]\nmax_message_bytes = 100000\n")
            .unwrap();
        let (effective, restart) = running.reloaded(new);
        // The new file's larger frame limit needs a restart too.
        assert_eq!(restart.len(), 2, "{restart:?}");
        assert_eq!(restart[0], "server.max_frame_bytes");
        assert!(restart[1].starts_with("max_message_bytes"), "{restart:?}");
        assert_eq!(effective.limits, running.limits);
        assert_eq!(effective.limits_for("big").max_message_bytes, 4096);

        // Within the running frame limit the same rooms reload.
        let new = parse_str(
            "[server]\nmax_frame_bytes = 65536\n[rooms.\"big\"]\nmax_message_bytes = 63488\n",
        )
        .unwrap();
        let (effective, restart) = running.reloaded(new);
        assert!(restart.is_empty(), "{restart:?}");
        assert_eq!(effective.limits_for("big").max_message_bytes, 63_488);
    }
}
