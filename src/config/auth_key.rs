//! The key the `[auth]` section names, read and checked when the configuration is loaded (so a
//! bad key fails validation, not the first stream); the edge's token verifier is built on it.

use jsonwebtoken::{Algorithm, DecodingKey};

use super::{AuthConfig, AuthMode};

/// The key and algorithm tokens are verified with; `None` in `none` mode. Errors say what is
/// wrong with the section.
pub fn decoding_key(auth: &AuthConfig) -> Result<Option<(DecodingKey, Algorithm)>, String> {
    if auth.mode == AuthMode::None {
        return Ok(None);
    }
    let key = if !auth.secret.is_empty() {
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
        return Err("jwt mode needs `secret` (HS256) or `public_key_path` (RS256/ES256)".into());
    };
    Ok(Some(key))
}
