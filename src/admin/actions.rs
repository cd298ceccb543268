//! Kick and CloseRoom: the request checks, the order each node carries out ([`KickOrder`],
//! [`kick_here`], [`close_here`]), and the calls that run it here (memory mode) or on every node
//! (cluster mode, through [`super::cluster`]) and report the sum.

use actix::Recipient;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{
    AdminEdge,
    ask::{ask, gone},
    cluster::Order,
    count,
};
use crate::{
    actors::{Close, Inspect, Kick},
    edge::sessions::SessionTarget,
    error::Fatal,
    hub::Hub,
    names::{RoomName, SessionId, UserName},
    proto::admin::{
        CloseRoomRequest, CloseRoomResponse, KickMode, KickRequest, KickResponse,
        kick_request::Target,
    },
};

/// Longest operator `reason`: it travels in a gRPC status message and in LEFT.
pub const MAX_REASON_BYTES: usize = 256;

pub(super) fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "`reason` must be at most {MAX_REASON_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// A Kick as each node carries it out.
#[derive(Debug, Clone)]
pub(crate) struct KickOrder {
    pub target: SessionTarget,
    /// `None`: from the whole server.
    pub room: Option<RoomName>,
    pub disconnect: bool,
    pub reason: String,
}

/// Carries out `kick` on this node's sessions: `None` when it names a room not open here.
pub(super) async fn kick_here(hub: &Hub, kick: &KickOrder) -> Result<Option<usize>, Status> {
    let sessions: Vec<(SessionId, Recipient<Kick>)> = match &kick.room {
        None => (hub.sessions.find(&kick.target).into_iter())
            .map(|(id, session)| (id, session.recipient()))
            .collect(),
        Some(room) => {
            let Some(addr) = hub.rooms.get(room) else {
                return Ok(None);
            };
            let snapshot = match ask(room, &addr, Inspect { members: true }).await {
                Ok(snapshot) => snapshot,
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
                Err(status) => return Err(status),
            };
            snapshot
                .members
                .into_iter()
                .filter(|(id, user, _)| kick.target.matches(*id, user))
                .map(|(id, _, session)| (id, session))
                .collect()
        }
    };
    for (id, session) in &sessions {
        if kick.disconnect {
            // Ended here and now: rooms stop delivering to it at once, whatever the session
            // actor is busy with; the actor then leaves its rooms.
            hub.sessions
                .end_stream(*id, Fatal::Kicked(kick.reason.clone()));
        }
        // do_send: one per kicked session, and the call must not wait on a busy session.
        session.do_send(Kick {
            room: kick.room.clone(),
            disconnect: kick.disconnect,
            reason: kick.reason.clone(),
        });
    }
    info!(
        action = "kick",
        sessions = sessions.len(),
        "admin action done here"
    );
    Ok(Some(sessions.len()))
}

/// Closes this node's part of `room`: `None` when it is not open here.
pub(super) async fn close_here(
    hub: &Hub,
    room: &RoomName,
    reason: String,
) -> Result<Option<usize>, Status> {
    let Some(addr) = hub.rooms.get(room) else {
        return Ok(None);
    };
    match ask(room, &addr, Close { reason }).await {
        Ok(members) => {
            info!(action = "close_room", room = %room, members, "admin action done here");
            Ok(Some(members))
        }
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

pub(super) async fn kick(
    edge: &AdminEdge,
    request: Request<KickRequest>,
) -> Result<Response<KickResponse>, Status> {
    let peer = request.remote_addr();
    let kick = request.into_inner();
    info!(
        action = "kick",
        ?peer,
        target = ?kick.target,
        room = kick.room,
        mode = kick.mode().as_str_name(),
        reason = kick.reason,
        "admin call"
    );
    let target = match &kick.target {
        Some(Target::User(user)) => SessionTarget::User(
            UserName::parse(user).map_err(|e| Status::invalid_argument(e.to_string()))?,
        ),
        Some(Target::SessionId(id)) if *id > 0 => SessionTarget::Id(SessionId(*id)),
        _ => return Err(Status::invalid_argument("name a `user` or a `session_id`")),
    };
    let disconnect = match KickMode::try_from(kick.mode) {
        Ok(KickMode::Disconnect) => true,
        Ok(KickMode::Leave) => false,
        _ => {
            return Err(Status::invalid_argument(
                "`mode` must be KICK_MODE_DISCONNECT or KICK_MODE_LEAVE",
            ));
        }
    };
    check_reason(&kick.reason)?;
    let room = match kick.room.as_str() {
        "" => None,
        name => Some(RoomName::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))?),
    };
    let order = KickOrder {
        target,
        room,
        disconnect,
        reason: kick.reason,
    };
    let tally = edge.everywhere(Order::Kick(order.clone())).await?;
    if let Some(room) = &order.room
        && !tally.found
    {
        return Err(gone(room));
    }
    info!(
        action = "kick",
        sessions = tally.count,
        nodes = tally.nodes,
        "admin call done"
    );
    Ok(Response::new(KickResponse {
        sessions: count(tally.count),
        nodes: tally.nodes,
    }))
}

pub(super) async fn close_room(
    edge: &AdminEdge,
    request: Request<CloseRoomRequest>,
) -> Result<Response<CloseRoomResponse>, Status> {
    let peer = request.remote_addr();
    let close = request.into_inner();
    info!(
        action = "close_room",
        ?peer,
        room = close.room,
        reason = close.reason,
        "admin call"
    );
    check_reason(&close.reason)?;
    let room = RoomName::parse(&close.room).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let tally = edge
        .everywhere(Order::Close {
            room: room.clone(),
            reason: close.reason,
        })
        .await?;
    if !tally.found {
        return Err(gone(&room));
    }
    info!(action = "close_room", room = %room, members = tally.count, nodes = tally.nodes, "admin call done");
    Ok(Response::new(CloseRoomResponse {
        members: count(tally.count),
        nodes: tally.nodes,
    }))
}
