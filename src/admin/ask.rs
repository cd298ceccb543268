//! Asking one room actor from an admin call: bounded by [`ROOM_ANSWER`], and a room that stopped
//! meanwhile reported as not open. Every call that reads or acts on a room goes through here.

use std::time::Duration;

use tonic::Status;

use crate::names::RoomName;

/// Longest wait for a room to answer an admin call.
pub(super) const ROOM_ANSWER: Duration = Duration::from_secs(5);

/// A room that stopped between the lookup and the call is as good as not open.
pub(super) fn gone(room: &RoomName) -> Status {
    Status::not_found(format!("room {room} is not open"))
}

/// Asks a room, bounded: a room that does not answer in time gives DEADLINE_EXCEEDED instead of
/// holding the admin call forever.
pub(super) async fn ask<M>(
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
