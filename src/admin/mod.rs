//! The operator API, `chat.v1.AdminService`: its token check and the five calls. It only reads
//! the registry and the session table and sends mail to room and session actors, so an operator
//! action is ordered with the chat traffic like any other request. Every call is logged, refused
//! ones included (without the token).
//!
//! In cluster mode the calls act on the whole cluster, whichever node is called: reads come from
//! Redis (presence and seq), Kick and CloseRoom are carried out by every node ([`cluster`]), and
//! Announce is published to the room's channel.

pub mod cluster;
mod paging;
pub mod throttle;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status, service::Interceptor};
use tracing::{info, warn};

use self::{
    cluster::{Operators, Order, Tally},
    paging::{member_token, page, parse_member_token},
    throttle::{AuthThrottle, Limits, Source},
};

use crate::{
    actors::{Announce, Close, Inspect, Kick},
    edge::sessions::SessionTarget,
    error::{ChatError, Fatal},
    hub::Hub,
    names::{RoomName, SessionId, UserName},
    proto::admin::{
        AnnounceRequest, AnnounceResponse, CloseRoomRequest, CloseRoomResponse, GetRoomRequest,
        GetRoomResponse, KickMode, KickRequest, KickResponse, ListRoomsRequest, ListRoomsResponse,
        RoomMember, RoomSummary, admin_service_server::AdminService, kick_request::Target,
    },
};

/// Longest operator `reason`: it travels in a gRPC status message and in LEFT.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest wait for a room to answer an admin call.
const ROOM_ANSWER: Duration = Duration::from_secs(5);

/// Checks `authorization: Bearer <token>` against `[admin] token`, read at every call so a
/// reloaded token applies at once. Failed authentication is throttled per client address
/// ([`throttle`]), and so are its log lines.
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

pub struct AdminEdge {
    hub: Arc<Hub>,
    /// `Some` in cluster mode: Kick and CloseRoom go to every node.
    operators: Option<Arc<Operators>>,
}

impl AdminEdge {
    pub fn new(hub: Arc<Hub>, operators: Option<Arc<Operators>>) -> AdminEdge {
        AdminEdge { hub, operators }
    }

    fn open_room(
        &self,
        name: &str,
    ) -> Result<(RoomName, actix::Addr<crate::actors::room::Room>), Status> {
        let room = RoomName::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let addr = self
            .hub
            .rooms
            .get(&room)
            .ok_or_else(|| Status::not_found(format!("room {room} is not open")))?;
        Ok((room, addr))
    }
}

/// A room that stopped between the lookup and the call is as good as not open.
fn gone(room: &RoomName) -> Status {
    Status::not_found(format!("room {room} is not open"))
}

/// Asks a room, bounded: a room that does not answer in time gives DEADLINE_EXCEEDED instead of
/// holding the admin call forever.
async fn ask<M>(
    room: &RoomName,
    addr: &actix::Addr<crate::actors::room::Room>,
    mail: M,
) -> Result<M::Result, Status>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    crate::actors::room::Room: actix::Handler<M>,
{
    match tokio::time::timeout(ROOM_ANSWER, addr.send(mail)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(gone(room)),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "room {room} did not answer in time"
        ))),
    }
}

fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "`reason` must be at most {MAX_REASON_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
pub(crate) async fn kick_here(hub: &Hub, kick: &KickOrder) -> Result<Option<usize>, Status> {
    let sessions = match &kick.room {
        None => hub.sessions.find(&kick.target),
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
pub(crate) async fn close_here(
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

fn unavailable(error: &crate::cluster::Unavailable) -> Status {
    Status::unavailable(format!("the cluster store cannot answer: {error}"))
}

impl AdminEdge {
    /// Runs an action here (memory mode) or on every node (cluster mode).
    async fn everywhere(&self, order: Order) -> Result<Tally, Status> {
        match &self.operators {
            Some(operators) => operators.ask_all(&order).await,
            None => Ok(Tally::one(order.run(&self.hub).await?)),
        }
    }

    /// This node's rooms after `after` (by name), enough of them for a page of `size` and the
    /// knowledge whether another page follows (0 = all). Only those rooms are asked, so paging
    /// through many rooms does not ask every room for every page.
    async fn list_rooms_here(&self, prefix: &str, after: &str, size: u32) -> Vec<RoomSummary> {
        let mut open: Vec<_> = self
            .hub
            .rooms
            .snapshot(prefix)
            .into_iter()
            .filter(|(name, _)| name.as_str() > after)
            .collect();
        open.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let want = match usize::try_from(size) {
            Ok(0) | Err(_) => usize::MAX,
            Ok(size) => size + 1,
        };
        let mut rooms = Vec::new();
        // A room that stopped or did not answer is left out, so a chunk may come back short;
        // the next chunk makes up for it.
        for chunk in open.chunks(want.min(open.len()).max(1)) {
            // The chunk's rooms are asked at once; the answers are gathered afterwards, bounded.
            let pending: Vec<_> = chunk
                .iter()
                .map(|(name, addr)| (name, addr.send(Inspect { members: false })))
                .collect();
            let deadline = tokio::time::Instant::now() + ROOM_ANSWER;
            for (name, answer) in pending {
                if let Ok(Ok(snapshot)) = tokio::time::timeout_at(deadline, answer).await {
                    rooms.push(RoomSummary {
                        name: name.to_string(),
                        members: count(snapshot.member_count),
                        last_seq: snapshot.last_seq,
                    });
                }
            }
            if rooms.len() >= want {
                break;
            }
        }
        rooms
    }

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

#[tonic::async_trait]
impl AdminService for AdminEdge {
    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let peer = request.remote_addr();
        let ListRoomsRequest {
            prefix,
            page_size,
            page_token,
        } = request.into_inner();
        info!(
            action = "list_rooms",
            ?peer,
            prefix,
            page_size,
            page_token,
            "admin call"
        );
        let mut rooms = match &self.hub.cluster {
            None => self.list_rooms_here(&prefix, &page_token, page_size).await,
            Some(engine) => engine
                .rooms(&prefix)
                .await
                .map_err(|e| unavailable(&e))?
                .into_iter()
                .map(|room| RoomSummary {
                    name: room.name,
                    members: u32::try_from(room.members).unwrap_or(u32::MAX),
                    last_seq: room.last_seq,
                })
                .collect(),
        };
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let after = (!page_token.is_empty()).then_some(page_token);
        let (rooms, next_page_token) = page(
            rooms,
            page_size,
            after,
            |room| room.name.clone(),
            |room| room.name.clone(),
        );
        Ok(Response::new(ListRoomsResponse {
            rooms,
            next_page_token,
        }))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomResponse>, Status> {
        let peer = request.remote_addr();
        let GetRoomRequest {
            room: name,
            page_size,
            page_token,
        } = request.into_inner();
        info!(
            action = "get_room",
            ?peer,
            room = name,
            page_size,
            page_token,
            "admin call"
        );
        let room = RoomName::parse(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let after = parse_member_token(&page_token)?;
        let (last_seq, mut members) = match &self.hub.cluster {
            None => {
                let (room, addr) = self.open_room(&name)?;
                let snapshot = ask(&room, &addr, Inspect { members: true }).await?;
                let members: Vec<RoomMember> = snapshot
                    .members
                    .iter()
                    .map(|(id, user, _)| RoomMember {
                        user: user.to_string(),
                        session_id: id.0,
                        node: String::new(),
                    })
                    .collect();
                (snapshot.last_seq, members)
            }
            Some(engine) => {
                let members = engine
                    .members(room.as_str())
                    .await
                    .map_err(|e| unavailable(&e))?;
                if members.is_empty() {
                    return Err(gone(&room));
                }
                let last_seq = engine
                    .last_seq(room.as_str())
                    .await
                    .map_err(|e| unavailable(&e))?;
                let members = members
                    .into_iter()
                    .map(|member| RoomMember {
                        user: member.user,
                        session_id: member.session.0,
                        node: member.node,
                    })
                    .collect();
                (last_seq, members)
            }
        };
        members.sort_unstable_by(|a, b| (&a.user, a.session_id).cmp(&(&b.user, b.session_id)));
        let total = count(members.len());
        let (members, next_page_token) = page(
            members,
            page_size,
            after,
            |m| (m.user.clone(), m.session_id),
            member_token,
        );
        Ok(Response::new(GetRoomResponse {
            room: Some(RoomSummary {
                name: room.to_string(),
                members: total,
                last_seq,
            }),
            members,
            next_page_token,
        }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
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
            name => {
                Some(RoomName::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
        };
        let order = KickOrder {
            target,
            room,
            disconnect,
            reason: kick.reason,
        };
        let tally = self.everywhere(Order::Kick(order.clone())).await?;
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

    async fn close_room(
        &self,
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
        let room =
            RoomName::parse(&close.room).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tally = self
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

    async fn announce(
        &self,
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
        let (seq, id) =
            match (self.hub.rooms.get(&room), &self.hub.cluster) {
                (Some(addr), _) => ask(&room, &addr, Announce { content })
                    .await?
                    .map_err(|e| match e {
                        ChatError::Unavailable(_) => Status::unavailable(e.to_string()),
                        e => Status::invalid_argument(e.to_string()),
                    })?,
                (None, Some(engine)) => self.announce_elsewhere(engine, &room, content).await?,
                (None, None) => return Err(gone(&room)),
            };
        info!(action = "announce", room = %room, seq, "admin call done");
        Ok(Response::new(AnnounceResponse { seq, id }))
    }
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
