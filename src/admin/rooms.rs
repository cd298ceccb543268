//! ListRooms and GetRoom: the read-only calls. In memory mode they ask this node's room actors;
//! in cluster mode they read presence and seq from Redis, so every node gives the same answer.
//! Both page their results ([`super::paging`]).

use tonic::{Request, Response, Status};
use tracing::info;

use super::{
    AdminEdge,
    ask::{ROOM_ANSWER, ask, gone},
    count,
    paging::{member_token, page, parse_member_token},
    unavailable,
};
use crate::{
    actors::Inspect,
    names::RoomName,
    proto::admin::{
        GetRoomRequest, GetRoomResponse, ListRoomsRequest, ListRoomsResponse, RoomMember,
        RoomSummary,
    },
};

impl AdminEdge {
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
}

pub(super) async fn list_rooms(
    edge: &AdminEdge,
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
    let mut rooms = match &edge.hub.cluster {
        None => edge.list_rooms_here(&prefix, &page_token, page_size).await,
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

pub(super) async fn get_room(
    edge: &AdminEdge,
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
    let (last_seq, mut members) = match &edge.hub.cluster {
        None => {
            let (room, addr) = edge.open_room(&name)?;
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
