//! Server configuration: the [`Config`] a TOML file loads into, with errors that name the file and
//! the key. The pieces: `schema.rs` (the sections and their defaults), `rooms.rs` (per-room
//! overrides and globs), `validate.rs` (impossible values), `keys.rs` (every key and whether it
//! reloads) and `reload.rs` (what a SIGHUP may change). `config/default.toml` is parsed by a unit
//! test so the shipped file can never drift from this code.

mod auth_key;
mod keys;
mod reload;
mod rooms;
mod schema;
mod validate;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use arc_swap::ArcSwap;
use serde::Deserialize;

pub use auth_key::decoding_key;
pub use keys::{KEYS, KeyInfo, Reload};
pub use rooms::glob_match;
pub use schema::{
    AdminConfig, AuthConfig, AuthMode, ClusterConfig, ClusterEngine, LogConfig, LogFormat,
    MIN_ADMIN_TOKEN_CHARS, MetricsConfig, RoomLimits, ServerConfig, SessionConfig, TlsConfig,
};

use rooms::Overrides;

/// The running configuration, swapped whole on reload; shared by the hub and the actors.
pub type LiveConfig = Arc<ArcSwap<Config>>;

/// Where `cargo run` looks when no `--config` is given; the built-in defaults apply if it is absent.
pub const DEFAULT_PATH: &str = "config/default.toml";

/// The largest `max_message_bytes` accepted: bounds what one frame can make the server buffer.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 4 * 1024 * 1024;

/// Room for every field of a request other than `content` (user, room, ref, kind, numbers, tags),
/// added to the largest `max_message_bytes` for the largest request any room accepts.
pub const ENVELOPE_BYTES: usize = 2048;

/// The largest `server.max_frame_bytes` accepted.
pub const MAX_FRAME_BYTES_CEILING: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    /// Default limits of every room.
    pub limits: RoomLimits,
    /// Per-room overrides of `limits`, keyed by exact name or a `*` glob; kept raw until
    /// [`Config::resolve`] merges and type-checks them against `limits`.
    rooms: BTreeMap<String, toml::Table>,
    #[serde(skip)]
    resolved: Overrides,
    /// The file this was loaded from, for logs.
    #[serde(skip)]
    source: String,
}

/// A configuration that cannot be used; printed as one line, the server then exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config {file}: {location}{message}")]
    Invalid {
        file: String,
        /// `key `a.b`: ` or `line L column C: `, whichever is known.
        location: String,
        message: String,
    },
}

impl Config {
    /// Loads `path`; `None` means [`DEFAULT_PATH`] when it exists, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => return Config::default().resolve("<built-in defaults>"),
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses TOML text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(file, text, &e))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key.is_empty() || key == "." {
                toml_error(file, text, &inner)
            } else {
                invalid(file, &key, inner.message())
            }
        })?;
        cfg.resolve(file)
    }

    /// The file this configuration was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Merges room overrides with `[limits]` and checks every value; the one place a config
    /// becomes usable.
    fn resolve(mut self, file: &str) -> Result<Config, ConfigError> {
        self.source = file.to_string();
        let resolved = Overrides::resolve(&self.limits, &self.rooms, &self.session)
            .map_err(|(k, m)| invalid(file, &k, &m))?;
        validate::config(&self).map_err(|(k, m)| invalid(file, &k, &m))?;
        self.resolved = resolved;
        let (frame, least) = (self.server.max_frame_bytes, self.largest_request_bytes());
        if !(least..=MAX_FRAME_BYTES_CEILING).contains(&frame) {
            let message = format!(
                "must be between {least} (the largest max_message_bytes of any room + {ENVELOPE_BYTES}) and {MAX_FRAME_BYTES_CEILING}"
            );
            return Err(invalid(file, "server.max_frame_bytes", &message));
        }
        Ok(self)
    }

    /// The limits of room `name`: its exact override, else the most specific matching glob,
    /// else `[limits]`.
    pub fn limits_for(&self, name: &str) -> Arc<RoomLimits> {
        self.resolved.for_room(name)
    }

    /// The largest request any room accepts: the largest `max_message_bytes` plus the
    /// envelope. `server.max_frame_bytes` is at least this; frames above it are refused in-band,
    /// and draw on the transport's budget of large frames (`transport::rechunk::FrameLimits`).
    pub fn largest_request_bytes(&self) -> usize {
        self.resolved.largest_message_bytes() + ENVELOPE_BYTES
    }
}

fn invalid(file: &str, key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        location: format!("key `{key}`: "),
        message: message.to_string(),
    }
}

/// A TOML syntax error as one line with its position, instead of toml's multi-line snippet.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line} column {column}: ")
        })
        .unwrap_or_default();
    ConfigError::Invalid {
        file: file.to_string(),
        location,
        message: e.message().replace('\n', " ").trim().to_string(),
    }
}

/// Parses `text` as a test file, with the error as its one-line message.
#[cfg(test)]
fn parse_str(text: &str) -> Result<Config, String> {
    Config::parse(text, "test.toml").map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config/default.toml");

    #[test]
    fn shipped_file_equals_built_in_defaults() {
        let shipped = parse_str(SHIPPED).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.server, defaults.server);
        assert_eq!(shipped.session, defaults.session);
        assert_eq!(shipped.metrics, defaults.metrics);
        assert_eq!(shipped.log, defaults.log);
        assert_eq!(shipped.auth, defaults.auth);
        assert_eq!(shipped.admin, defaults.admin);
        assert_eq!(shipped.cluster, defaults.cluster);
        assert_eq!(shipped.limits, defaults.limits);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse_str("").unwrap();
        assert_eq!(cfg.limits, RoomLimits::default());
        assert_eq!(cfg.server.default_room, "lobby");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse_str("[session]\noutbound_queue = 8\nqueue_len = 3\n").unwrap_err();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("queue_len"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse_str("[limits]\nmax_members = \"many\"\n").unwrap_err();
        assert!(err.contains("limits.max_members"), "{err}");
    }

    #[test]
    fn syntax_error_has_a_line_number() {
        let err = parse_str("[server]\nlisten = \n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
