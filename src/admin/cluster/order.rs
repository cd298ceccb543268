//! What an operator request says: [`Order`], the action each node carries out on its own
//! sessions and rooms, and [`WireOrder`], its JSON form on the operator channel. A request read
//! from Redis is checked again as the admin API checks a call.

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::{
    admin::actions::{KickOrder, check_reason, close_here, kick_here},
    edge::sessions::SessionTarget,
    hub::Hub,
    names::{RoomName, SessionId, UserName},
};

/// An operator action every node carries out on its own sessions and rooms.
#[derive(Debug, Clone)]
pub(crate) enum Order {
    Kick(KickOrder),
    Close { room: RoomName, reason: String },
}

impl Order {
    /// Carries the action out on this node: `None` when it names a room not open here.
    pub(crate) async fn run(&self, hub: &Hub) -> Result<Option<usize>, Status> {
        match self {
            Order::Kick(kick) => kick_here(hub, kick).await,
            Order::Close { room, reason } => close_here(hub, room, reason.clone()).await,
        }
    }

    pub(super) fn action(&self) -> &'static str {
        match self {
            Order::Kick(_) => "kick",
            Order::Close { .. } => "close_room",
        }
    }
}

/// An [`Order`] as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum WireOrder {
    Kick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        disconnect: bool,
        reason: String,
    },
    Close {
        room: String,
        reason: String,
    },
}

impl From<&Order> for WireOrder {
    fn from(order: &Order) -> WireOrder {
        match order {
            Order::Kick(kick) => {
                let (user, session) = match &kick.target {
                    SessionTarget::User(user) => (Some(user.to_string()), None),
                    SessionTarget::Id(id) => (None, Some(id.0)),
                };
                WireOrder::Kick {
                    user,
                    session,
                    room: kick.room.as_ref().map(ToString::to_string),
                    disconnect: kick.disconnect,
                    reason: kick.reason.clone(),
                }
            }
            Order::Close { room, reason } => WireOrder::Close {
                room: room.to_string(),
                reason: reason.clone(),
            },
        }
    }
}

impl TryFrom<WireOrder> for Order {
    type Error = String;

    /// Names are checked again: the request came through Redis, not through the admin API.
    fn try_from(wire: WireOrder) -> Result<Order, String> {
        let room = |name: &str| RoomName::parse(name).map_err(|e| e.to_string());
        match wire {
            WireOrder::Kick {
                user,
                session,
                room: room_name,
                disconnect,
                reason,
            } => {
                let target = match (user, session) {
                    (Some(user), None) => {
                        SessionTarget::User(UserName::parse(&user).map_err(|e| e.to_string())?)
                    }
                    (None, Some(id)) if id > 0 => SessionTarget::Id(SessionId(id)),
                    _ => return Err("a kick names exactly one user or session".into()),
                };
                check_reason(&reason).map_err(|e| e.message().to_string())?;
                Ok(Order::Kick(KickOrder {
                    target,
                    room: room_name.as_deref().map(room).transpose()?,
                    disconnect,
                    reason,
                }))
            }
            WireOrder::Close { room: name, reason } => {
                check_reason(&reason).map_err(|e| e.message().to_string())?;
                Ok(Order::Close {
                    room: room(&name)?,
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(order: &Order) -> Order {
        let json = serde_json::to_vec(&WireOrder::from(order)).unwrap();
        Order::try_from(serde_json::from_slice::<WireOrder>(&json).unwrap()).unwrap()
    }

    #[test]
    fn orders_survive_the_wire() {
        let kick = Order::Kick(KickOrder {
            target: SessionTarget::User(UserName::parse("al|ice").unwrap()),
            room: Some(RoomName::parse("lobby").unwrap()),
            disconnect: true,
            reason: "spam".into(),
        });
        let Order::Kick(back) = round_trip(&kick) else {
            panic!("not a kick");
        };
        assert_eq!(
            back.target,
            SessionTarget::User(UserName::parse("al|ice").unwrap())
        );
        assert_eq!(back.room.as_ref().map(|r| r.as_str()), Some("lobby"));
        assert!(back.disconnect);
        assert_eq!(back.reason, "spam");

        let by_id = Order::Kick(KickOrder {
            target: SessionTarget::Id(SessionId(1 << 40)),
            room: None,
            disconnect: false,
            reason: String::new(),
        });
        let Order::Kick(back) = round_trip(&by_id) else {
            panic!("not a kick");
        };
        assert_eq!(back.target, SessionTarget::Id(SessionId(1 << 40)));
        assert!(back.room.is_none() && !back.disconnect);

        let close = Order::Close {
            room: RoomName::parse("ops").unwrap(),
            reason: "done".into(),
        };
        let Order::Close { room, reason } = round_trip(&close) else {
            panic!("not a close");
        };
        assert_eq!((room.as_str(), reason.as_str()), ("ops", "done"));
    }

    #[test]
    fn requests_from_redis_are_checked_again() {
        let refused = [
            r#"{"op":"kick","disconnect":true,"reason":""}"#,
            r#"{"op":"kick","user":"a","session":3,"disconnect":true,"reason":""}"#,
            r#"{"op":"kick","user":"system","disconnect":true,"reason":""}"#,
            r#"{"op":"close","room":"","reason":""}"#,
            r#"{"op":"kick","session":0,"disconnect":true,"reason":""}"#,
            r#"{"op":"close","room":"r","reason":"a\u0007b"}"#,
        ];
        for json in refused {
            let wire: WireOrder = serde_json::from_str(json).unwrap();
            assert!(Order::try_from(wire).is_err(), "{json}");
        }
        assert!(serde_json::from_str::<WireOrder>(r#"{"op":"ban"}"#).is_err());
    }
}
