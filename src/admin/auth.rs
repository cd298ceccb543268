//! The admin API's interceptor: the bearer token checked against `[admin] token` in constant
//! time, after the per-address throttle of failed authentication ([`super::throttle`]) has let
//! the caller through. It runs before any call's handler, so no handler sees an unauthenticated
//! request.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};
use tracing::warn;

use super::throttle::{AuthThrottle, Limits, Source};
use crate::hub::Hub;

/// Checks `authorization: Bearer <token>` against `[admin] token`, read at every call so a
/// reloaded token applies at once. Failed authentication is throttled per client address
/// ([`super::throttle`]), and so are its log lines.
#[derive(Clone)]
pub struct AdminAuth {
    hub: Arc<Hub>,
    /// Shared by every connection's copy of the interceptor.
    throttle: Arc<AuthThrottle>,
}

impl AdminAuth {
    pub fn new(hub: Arc<Hub>) -> AdminAuth {
        AdminAuth {
            hub,
            throttle: Arc::default(),
        }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let config = self.hub.config();
        let limits = Limits {
            max_failures: config.admin.max_failed_auth,
            interval: Duration::from_millis(config.admin.failed_auth_interval_ms),
        };
        let peer = request.remote_addr();
        let source = Source::of(peer.map(|p| p.ip()));
        let now = Instant::now();
        // Before the token is looked at: a throttled address learns nothing about it, not even
        // when it is right.
        if let Err(throttled) = self.throttle.check(source, limits, now) {
            if let Some(suppressed) = throttled.log {
                warn!(?peer, %source, suppressed, "admin call refused: too many failed authentications");
            }
            return Err(Status::resource_exhausted(format!(
                "too many failed admin authentications from this address; retry in {} ms",
                throttled.retry_after.as_millis().max(1)
            )));
        }
        let refuse = |status: Status, why: &str| {
            if let Some(suppressed) = self.throttle.failed(source, limits, now) {
                warn!(?peer, %source, suppressed, "admin call refused: {why}");
            }
            Err(status)
        };
        let expected = config.admin.token.as_bytes();
        if expected.is_empty() {
            return refuse(
                Status::permission_denied(
                    "the admin API is disabled: no [admin] token is configured",
                ),
                "no [admin] token is configured",
            );
        }
        let Ok(presented) = crate::edge::auth::bearer(request.metadata()) else {
            return refuse(
                Status::unauthenticated("admin calls need `authorization: Bearer <token>`"),
                "no bearer token",
            );
        };
        if !token_matches(presented.as_bytes(), expected) {
            return refuse(
                Status::permission_denied("wrong admin token"),
                "wrong token",
            );
        }
        self.throttle.succeeded(source);
        Ok(request)
    }
}

/// Compares in constant time: the work follows the configured token's length, not the guess, so
/// the timing does not tell how much of a guess was right, and (unlike `ct_eq` on slices, which
/// returns at once on different lengths) hardly whether its length was.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let mut same = (presented.len() as u64).ct_eq(&(expected.len() as u64));
    for (i, byte) in expected.iter().enumerate() {
        same &= presented.get(i).copied().unwrap_or(0).ct_eq(byte);
    }
    bool::from(same)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        let token = b"0123456789abcdef";
        assert!(token_matches(token, token));
        assert!(!token_matches(b"0123456789abcdeX", token));
        assert!(!token_matches(b"0123456789abcde", token), "a prefix");
        assert!(!token_matches(b"0123456789abcdef0", token), "longer");
        assert!(
            !token_matches(b"0123456789abcdef\0", token),
            "padded with the filler"
        );
        assert!(!token_matches(b"", token));
    }
}
