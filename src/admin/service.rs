//! [`AdminEdge`], the tonic service of `chat.v1.AdminService`: what the calls share (the hub, the
//! cluster's operator channel) and the trait impl, which hands each call to the file that owns
//! it: [`super::rooms`] (ListRooms, GetRoom), [`super::actions`] (Kick, CloseRoom),
//! [`super::announce`] (Announce).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    actions, announce,
    cluster::{Operators, Order, Tally},
    rooms,
};
use crate::{
    hub::Hub,
    names::RoomName,
    proto::admin::{
        AnnounceRequest, AnnounceResponse, CloseRoomRequest, CloseRoomResponse, GetRoomRequest,
        GetRoomResponse, KickRequest, KickResponse, ListRoomsRequest, ListRoomsResponse,
        admin_service_server::AdminService,
    },
};

/// The admin service. Its handlers only read the registry and the session table and send mail
/// to room and session actors; the token was checked by [`super::AdminAuth`] before they run.
pub struct AdminEdge {
    pub(super) hub: Arc<Hub>,
    /// `Some` in cluster mode: Kick and CloseRoom go to every node.
    pub(super) operators: Option<Arc<Operators>>,
}

impl AdminEdge {
    pub fn new(hub: Arc<Hub>, operators: Option<Arc<Operators>>) -> AdminEdge {
        AdminEdge { hub, operators }
    }

    pub(super) fn open_room(
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

    /// Runs an action here (memory mode) or on every node (cluster mode).
    pub(super) async fn everywhere(&self, order: Order) -> Result<Tally, Status> {
        match &self.operators {
            Some(operators) => operators.ask_all(&order).await,
            None => Ok(Tally::one(order.run(&self.hub).await?)),
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminEdge {
    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        rooms::list_rooms(self, request).await
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomResponse>, Status> {
        rooms::get_room(self, request).await
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        actions::kick(self, request).await
    }

    async fn close_room(
        &self,
        request: Request<CloseRoomRequest>,
    ) -> Result<Response<CloseRoomResponse>, Status> {
        actions::close_room(self, request).await
    }

    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        announce::announce(self, request).await
    }
}
