//! Authentication of streams: in `jwt` mode every `ChatStream` call carries
//! `authorization: Bearer <JWT>`, verified here (signature, `exp`, and `iss`/`aud` when
//! configured). The token's `sub` is the session's user, and its optional `rooms` claim (names or
//! `*` globs) limits the rooms the session may join or post to.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use tonic::{Status, metadata::MetadataMap};
use tracing::warn;

use crate::{
    config::{AuthConfig, AuthMode, glob_match},
    names::UserName,
};

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub user: UserName,
    /// `None`: every room. Otherwise room names or globs.
    pub rooms: Option<Vec<String>>,
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
        if auth.mode == AuthMode::None {
            return Ok(None);
        }
        let (key, algorithm) = if !auth.secret.is_empty() {
            (
                DecodingKey::from_secret(auth.secret.as_bytes()),
                Algorithm::HS256,
            )
        } else if let Some(path) = &auth.public_key_path {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            // The decoders also take a private key, and the server would then start and refuse
            // every token; say so at load instead.
            if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
                return Err(format!(
                    "{} holds a private key; `public_key_path` takes the public key (`openssl pkey -pubout`)",
                    path.display()
                ));
            }
            match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => (key, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ec_pem(&pem).map_err(|e| {
                        format!("{} is not an RSA or EC public key: {e}", path.display())
                    })?,
                    Algorithm::ES256,
                ),
            }
        } else {
            return Err(
                "jwt mode needs `secret` (HS256) or `public_key_path` (RS256/ES256)".into(),
            );
        };
        let mut validation = Validation::new(algorithm);
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
        let header = metadata
            .get("authorization")
            .ok_or_else(|| refuse("no authorization metadata"))?
            .to_str()
            .map_err(|_| refuse("authorization metadata is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| refuse("authorization is not a Bearer token"))?;
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refuse(&format!("invalid token: {e}")))?
            .claims;
        let user =
            UserName::parse(&claims.sub).map_err(|_| refuse("`sub` is not a valid user name"))?;
        Ok(Authorized {
            user,
            rooms: claims.rooms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_private_key_as_public_key_path_is_refused_at_load() {
        let error = Verifier::from_config(&jwt_with_key("rs256-test-key.pem")).unwrap_err();
        assert!(error.contains("holds a private key"), "{error}");
        assert!(
            Verifier::from_config(&jwt_with_key("rs256-test-pub.pem")).is_ok_and(|v| v.is_some())
        );
    }
}
