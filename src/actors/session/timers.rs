//! A session's two timers: the idle timeout (one timer, re-armed for the time left rather than
//! reset on every message) and the end of its token's validity.

use std::time::{Duration, SystemTime};

use actix::{AsyncContext, Context};
use tracing::info;

use super::Session;
use crate::error::Fatal;

/// Longest single wait of the token-expiry timer: a far `exp` is reached in steps, each
/// measured again on the wall clock (the one `exp` is in), which may also be set meanwhile.
const EXPIRY_STEP: Duration = Duration::from_secs(3600);

impl Session {
    /// Ends the session with UNAUTHENTICATED "token expired" when its token's `exp` passes.
    pub(super) fn watch_expiry(&mut self, ctx: &mut Context<Self>, expires_at: SystemTime) {
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left.is_zero() {
            info!(session = %self.id, user = self.user_name(), "token expired");
            // Stopping from within `started` is fine: actix stops once started returns.
            return self.end(Fatal::TokenExpired, ctx);
        }
        ctx.run_later(left.min(EXPIRY_STEP), move |session, ctx| {
            session.watch_expiry(ctx, expires_at);
        });
    }

    /// Ends the session once nothing has arrived for the configured idle timeout. One timer per
    /// session, re-armed for the remaining time instead of being reset on every message.
    pub(super) fn watch_idle(&self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |session, ctx| {
            let Some(limit) = session.env.rooms.config().session.idle_timeout() else {
                return;
            };
            let idle = session.last_seen.elapsed();
            if idle >= limit {
                session.end(Fatal::IdleTimeout, ctx);
            } else {
                session.watch_idle(ctx, limit - idle);
            }
        });
    }
}
