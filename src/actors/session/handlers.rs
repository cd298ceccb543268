//! The mail a Session actor handles: requests and the end of the request stream from the edge,
//! evictions and room closures from rooms, and shutdown and kicks from the server and operators.

use std::time::Instant;

use actix::{ActorContext, Context, Handler};
use tracing::info;

use super::Session;
use crate::{
    actors::{End, Evicted, Inbound, InboundEnded, Kick, Removed},
    error::Fatal,
    metrics,
    names::RoomName,
};

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, Inbound(msg): Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        metrics::get().received.increment(1);
        self.request(msg, ctx);
    }
}

impl Handler<InboundEnded> for Session {
    type Result = ();

    fn handle(&mut self, InboundEnded(failure): InboundEnded, ctx: &mut Context<Self>) {
        match failure {
            Some(fatal) => self.end(fatal, ctx),
            // Half-close: what is queued is still delivered; the stream ends once every room
            // has let go of this session's handle. A peer that never reads it is cut after the
            // idle timeout, so a half-closed stream cannot hold its queue forever.
            None => {
                if let Some(limit) = self.env.rooms.config().session.idle_timeout() {
                    actix_rt::spawn(self.tx.end_unless_drained(limit));
                }
                ctx.stop();
            }
        }
    }
}

impl Handler<Evicted> for Session {
    type Result = ();

    fn handle(&mut self, evicted: Evicted, ctx: &mut Context<Self>) {
        self.rooms.remove(&evicted.room);
        self.end(Fatal::SlowConsumer, ctx);
    }
}

impl Handler<End> for Session {
    type Result = ();

    fn handle(&mut self, End(fatal): End, ctx: &mut Context<Self>) {
        self.end(fatal, ctx);
    }
}

impl Handler<Kick> for Session {
    type Result = ();

    fn handle(&mut self, kick: Kick, ctx: &mut Context<Self>) {
        let room = kick.room.as_ref().map_or("", RoomName::as_str);
        info!(
            session = %self.id,
            user = self.user_name(),
            room,
            disconnect = kick.disconnect,
            reason = %kick.reason,
            "kicked by an operator"
        );
        if kick.disconnect {
            return self.end(Fatal::Kicked(kick.reason), ctx);
        }
        let rooms: Vec<RoomName> = match kick.room {
            // Left meanwhile: nothing to do, and no error for a request the client never made.
            Some(room) if !self.rooms.contains(&room) => Vec::new(),
            Some(room) => vec![room],
            None => self.rooms.names().cloned().collect(),
        };
        for room in rooms {
            self.leave(room, String::new(), kick.reason.clone(), ctx);
        }
    }
}

impl Handler<Removed> for Session {
    type Result = ();

    fn handle(&mut self, removed: Removed, _ctx: &mut Context<Self>) {
        // Only that room: the session may already be in a newer room of the same name.
        if self.rooms.get(&removed.room).map(|joined| joined.id) == Some(removed.id) {
            self.rooms.remove(&removed.room);
        }
    }
}
