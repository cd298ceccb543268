//! Applying a re-read configuration to the running server: the new configuration is swapped in
//! and the parts of the hub that keep a copy of a live key are told. The SIGHUP loop
//! (`signals`) calls it; which keys may change is `config`'s ([`Config::reloaded`]).

use std::sync::Arc;

use crate::{config::Config, hub::Hub};

/// Applies `new` to the running server: every key `config::KEYS` marks live takes effect at once
/// (every room, open ones included, takes the new limits). Returns the changed keys that need a
/// restart; those keep their running value.
pub fn apply_reload(hub: &Hub, new: Config) -> Vec<String> {
    let (effective, restart) = hub.config().reloaded(new);
    let restart: Vec<String> = restart.into_iter().map(String::from).collect();
    hub.sessions.set_max(effective.server.max_sessions);
    hub.rooms.set_max(effective.server.max_rooms);
    hub.config.store(Arc::new(effective));
    hub.rooms.reconfigure_all();
    restart
}
