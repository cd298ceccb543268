//! The operator API, `chat.v1.AdminService`: its token check and the five calls. It only reads
//! the registry and the session table and sends mail to room and session actors, so an operator
//! action is ordered with the chat traffic like any other request. Every call is logged, refused
//! ones included (without the token).

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status, service::Interceptor};
use tracing::{info, warn};

use crate::{
    actors::{Announce, Close, Inspect, Kick},
    hub::{Hub, SessionTarget},
    names::{RoomName, SessionId, UserName},
    proto::admin::{
        AnnounceRequest, AnnounceResponse, CloseRoomRequest, CloseRoomResponse, GetRoomRequest,
        GetRoomResponse, KickMode, KickRequest, KickResponse, ListRoomsRequest, ListRoomsResponse,
        RoomMember, RoomSummary, admin_service_server::AdminService,
    },
};

/// Checks `authorization: Bearer <token>` against `[admin] token`, read at every call so a
/// reloaded token applies at once.
#[derive(Clone)]
pub struct AdminAuth {
    hub: Arc<Hub>,
}

impl AdminAuth {
    pub fn new(hub: Arc<Hub>) -> AdminAuth {
        AdminAuth { hub }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let config = self.hub.config();
        let expected = config.admin.token.as_bytes();
        let peer = request.remote_addr();
        if expected.is_empty() {
            warn!(?peer, "admin call refused: no [admin] token is configured");
            return Err(Status::permission_denied(
                "the admin API is disabled: no [admin] token is configured",
            ));
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            warn!(?peer, "admin call refused: no bearer token");
            return Err(Status::unauthenticated(
                "admin calls need `authorization: Bearer <token>`",
            ));
        };
        // Constant time, so the comparison does not tell how much of a guess was right.
        if !bool::from(presented.as_bytes().ct_eq(expected)) {
            warn!(?peer, "admin call refused: wrong token");
            return Err(Status::permission_denied("wrong admin token"));
        }
        Ok(request)
    }
}

pub struct AdminEdge {
    hub: Arc<Hub>,
}

impl AdminEdge {
    pub fn new(hub: Arc<Hub>) -> AdminEdge {
        AdminEdge { hub }
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

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl AdminService for AdminEdge {
    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let prefix = request.into_inner().prefix;
        // Every room is asked at once; the answers are gathered afterwards.
        let pending: Vec<_> = self
            .hub
            .rooms
            .snapshot(&prefix)
            .into_iter()
            .map(|(name, addr)| (name, addr.send(Inspect { members: false })))
            .collect();
        let mut rooms = Vec::with_capacity(pending.len());
        for (name, answer) in pending {
            if let Ok(snapshot) = answer.await {
                rooms.push(RoomSummary {
                    name: name.to_string(),
                    members: count(snapshot.member_count),
                    last_seq: snapshot.last_seq,
                });
            }
        }
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        info!(action = "list_rooms", prefix, rooms = rooms.len(), "admin");
        Ok(Response::new(ListRoomsResponse { rooms }))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomResponse>, Status> {
        let (room, addr) = self.open_room(&request.into_inner().room)?;
        let snapshot = addr
            .send(Inspect { members: true })
            .await
            .map_err(|_| gone(&room))?;
        let mut members: Vec<RoomMember> = snapshot
            .members
            .iter()
            .map(|(id, user, _)| RoomMember {
                user: user.to_string(),
                session_id: id.0,
            })
            .collect();
        members.sort_unstable_by(|a, b| (&a.user, a.session_id).cmp(&(&b.user, b.session_id)));
        info!(action = "get_room", room = %room, members = members.len(), "admin");
        Ok(Response::new(GetRoomResponse {
            room: Some(RoomSummary {
                name: room.to_string(),
                members: count(snapshot.member_count),
                last_seq: snapshot.last_seq,
            }),
            members,
        }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let kick = request.into_inner();
        let target = match (kick.user.is_empty(), kick.session_id) {
            (false, 0) => SessionTarget::User(
                UserName::parse(&kick.user).map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
            (true, id) if id > 0 => SessionTarget::Id(SessionId(id)),
            _ => {
                return Err(Status::invalid_argument(
                    "name exactly one of `user` and `session_id`",
                ));
            }
        };
        let disconnect = match KickMode::try_from(kick.mode) {
            Ok(KickMode::Disconnect) => true,
            Ok(KickMode::Leave) => false,
            Err(_) => return Err(Status::invalid_argument("unknown kick mode")),
        };
        let (room, sessions) = if kick.room.is_empty() {
            (None, self.hub.sessions.find(&target))
        } else {
            let (room, addr) = self.open_room(&kick.room)?;
            let snapshot = addr
                .send(Inspect { members: true })
                .await
                .map_err(|_| gone(&room))?;
            let members = snapshot
                .members
                .into_iter()
                .filter(|(id, user, _)| target.matches(*id, user))
                .map(|(id, _, session)| (id, session))
                .collect();
            (Some(room), members)
        };
        let mail = Kick {
            room: room.clone(),
            disconnect,
            reason: kick.reason.clone(),
        };
        let mut kicked = 0;
        for (_, session) in &sessions {
            // A session that ended meanwhile has nothing left to kick.
            if session.send(mail.clone()).await.is_ok() {
                kicked += 1;
            }
        }
        info!(
            action = "kick",
            target = ?target,
            room = room.as_ref().map_or("", RoomName::as_str),
            disconnect,
            reason = %kick.reason,
            sessions = kicked,
            "admin"
        );
        Ok(Response::new(KickResponse {
            sessions: count(kicked),
        }))
    }

    async fn close_room(
        &self,
        request: Request<CloseRoomRequest>,
    ) -> Result<Response<CloseRoomResponse>, Status> {
        let close = request.into_inner();
        let (room, addr) = self.open_room(&close.room)?;
        let members = addr
            .send(Close {
                reason: close.reason.clone(),
            })
            .await
            .map_err(|_| gone(&room))?;
        info!(action = "close_room", room = %room, members, reason = %close.reason, "admin");
        Ok(Response::new(CloseRoomResponse {
            members: count(members),
        }))
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let announce = request.into_inner();
        let (room, addr) = self.open_room(&announce.room)?;
        let bytes = announce.content.len();
        let (seq, id) = addr
            .send(Announce {
                content: announce.content,
            })
            .await
            .map_err(|_| gone(&room))?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(action = "announce", room = %room, seq, bytes, "admin");
        Ok(Response::new(AnnounceResponse { seq, id }))
    }
}
