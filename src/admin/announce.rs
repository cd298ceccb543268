//! Announce: a system CHAT in a room. A room open on this node takes it through its log like
//! any post (so it gets a seq and is kept in history); a room whose members are all on other
//! nodes gets it published to its Redis channel directly.

use tonic::{Request, Response, Status};
use tracing::info;

use super::{
    AdminEdge,
    ask::{ask, gone},
    unavailable,
};
use crate::{
    actors::Announce,
    error::ChatError,
    names::RoomName,
    proto::admin::{AnnounceRequest, AnnounceResponse},
};

impl AdminEdge {
    /// Announce to a room that has members on other nodes only: checked and published as the
    /// room's Redis log would (the nodes holding it fan it out and keep it in history).
    async fn announce_elsewhere(
        &self,
        engine: &crate::cluster::RedisEngine,
        room: &RoomName,
        content: String,
    ) -> Result<(u64, String), Status> {
        let members = engine
            .members(room.as_str())
            .await
            .map_err(|e| unavailable(&e))?;
        if members.is_empty() {
            return Err(gone(room));
        }
        let limits = self.hub.config().limits_for(room.as_str());
        crate::log::check_announcement(&content, &limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        crate::log::redis::publish_announcement(engine, room, limits.history, content)
            .await
            .map_err(|e| unavailable(&e))
    }
}

pub(super) async fn announce(
    edge: &AdminEdge,
    request: Request<AnnounceRequest>,
) -> Result<Response<AnnounceResponse>, Status> {
    let peer = request.remote_addr();
    let announce = request.into_inner();
    let bytes = announce.content.len();
    info!(
        action = "announce",
        ?peer,
        room = announce.room,
        bytes,
        "admin call"
    );
    let room =
        RoomName::parse(&announce.room).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let content = announce.content;
    let (seq, id) = match (edge.hub.rooms.get(&room), &edge.hub.cluster) {
        (Some(addr), _) => ask(&room, &addr, Announce { content })
            .await?
            .map_err(|e| match e {
                ChatError::Unavailable(_) => Status::unavailable(e.to_string()),
                e => Status::invalid_argument(e.to_string()),
            })?,
        (None, Some(engine)) => edge.announce_elsewhere(engine, &room, content).await?,
        (None, None) => return Err(gone(&room)),
    };
    info!(action = "announce", room = %room, seq, "admin call done");
    Ok(Response::new(AnnounceResponse { seq, id }))
}
