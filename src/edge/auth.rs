//! Authentication of streams: in `jwt` mode every `ChatStream` call carries
//! `authorization: Bearer <JWT>`, verified here (signature, `exp`, `nbf`, and `iss`/`aud` when
//! configured). The token's `sub` is the session's user, its `exp` the moment the session ends,
//! and its optional `rooms` claim (names or `*` globs) limits the rooms the session may join or
//! post to. [`bearer`] reads the header for the chat service and the admin API alike.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, Validation, decode};
use serde::Deserialize;
use tonic::{Status, metadata::MetadataMap};
use tracing::warn;

use crate::{
    config::{AuthConfig, decoding_key, glob_match},
    names::UserName,
};

/// Clock skew tolerated on `nbf`: a token issued "now" by an issuer whose clock runs a little
/// ahead is still accepted. `exp` gets none: a session ends when its token expires, so a token
/// that has already expired is refused rather than let in to be ended at once.
pub const NBF_LEEWAY: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch; JWT numeric dates may carry a fraction.
    exp: f64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// The token of an `authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` are accepted as well. The error says what is
/// wrong, never the token.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, &'static str> {
    let header = metadata
        .get("authorization")
        .ok_or("no authorization metadata")?
        .to_str()
        .map_err(|_| "authorization metadata is not text")?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or("authorization is not a Bearer token")?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("authorization is not a Bearer token");
    }
    Ok(token)
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub user: UserName,
    /// `None`: every room. Otherwise room names or globs.
    pub rooms: Option<Vec<String>>,
    /// When the token expires and its session ends; `None` when `exp` is too far away to be a
    /// time at all.
    pub expires_at: Option<SystemTime>,
}

impl Authorized {
    pub fn may_use(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, room)))
    }
}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier of `auth`, `None` in `none` mode. Errors name what is wrong, for config
    /// validation.
    pub fn from_config(auth: &AuthConfig) -> Result<Option<Verifier>, String> {
        let Some((key, algorithm)) = decoding_key(auth)? else {
            return Ok(None);
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        // The library applies one leeway to `exp` and `nbf`; `exp` is checked again, strictly,
        // in `verify`.
        validation.leeway = NBF_LEEWAY.as_secs();
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
        }
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Verifier { key, validation }))
    }

    /// Checks the call's bearer token; refusals are UNAUTHENTICATED and logged without the token.
    pub fn verify(&self, metadata: &MetadataMap) -> Result<Authorized, Status> {
        let refuse = |why: &str| {
            warn!(reason = why, "stream refused: authentication failed");
            Status::unauthenticated(format!("authentication failed: {why}"))
        };
        let token = bearer(metadata).map_err(refuse)?;
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refuse(&format!("invalid token: {e}")))?
            .claims;
        let expires_at = Duration::try_from_secs_f64(claims.exp)
            .ok()
            .and_then(|exp| UNIX_EPOCH.checked_add(exp));
        if expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(refuse("token expired"));
        }
        let user =
            UserName::parse(&claims.sub).map_err(|_| refuse("`sub` is not a valid user name"))?;
        Ok(Authorized {
            user,
            rooms: claims.rooms,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;

    fn jwt_with_key(file: &str) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            public_key_path: Some(
                [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", file]
                    .iter()
                    .collect(),
            ),
            ..AuthConfig::default()
        }
    }

    fn metadata(authorization: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", authorization.parse().unwrap());
        map
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR  t0k"] {
            assert_eq!(bearer(&metadata(header)), Ok("t0k"), "{header:?}");
        }
        for header in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert!(bearer(&metadata(header)).is_err(), "{header:?}");
        }
        assert!(bearer(&MetadataMap::new()).is_err());
    }

    #[test]
    fn a_private_key_as_public_key_path_is_refused_at_load() {
        let error = Verifier::from_config(&jwt_with_key("rs256-test-key.pem")).unwrap_err();
        assert!(error.contains("holds a private key"), "{error}");
        assert!(
            Verifier::from_config(&jwt_with_key("rs256-test-pub.pem")).is_ok_and(|v| v.is_some())
        );
    }
}
