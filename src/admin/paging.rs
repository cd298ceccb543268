//! Paging of the admin listings (ListRooms, GetRoom): one page of a sorted list after a page
//! token, and GetRoom's member tokens.

use tonic::Status;

use crate::proto::admin::RoomMember;

/// One page of `items`, already sorted by `key`: those after the key `after`, at most `size`
/// (0 = all), and the next page's token (empty on the last page). A page token is the last key
/// of its page, so pages stay consistent while rooms and members come and go.
pub(super) fn page<T, K: Ord>(
    items: Vec<T>,
    size: u32,
    after: Option<K>,
    key: impl Fn(&T) -> K,
    token: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let mut rest: Vec<T> = match after {
        Some(after) => items.into_iter().filter(|item| key(item) > after).collect(),
        None => items,
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size == 0 || rest.len() <= size {
        return (rest, String::new());
    }
    rest.truncate(size);
    let next = rest.last().map(token).unwrap_or_default();
    (rest, next)
}

/// GetRoom's page token: `<session id>:<user>` of the page's last member (users may contain
/// `:`, session ids not).
pub(super) fn member_token(member: &RoomMember) -> String {
    format!("{}:{}", member.session_id, member.user)
}

pub(super) fn parse_member_token(token: &str) -> Result<Option<(String, u64)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("`page_token` is not one this server gave out");
    let (session, user) = token.split_once(':').ok_or_else(bad)?;
    let session = session.parse().map_err(|_| bad())?;
    Ok(Some((user.to_string(), session)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_number(items: Vec<u32>, size: u32, after: Option<u32>) -> (Vec<u32>, String) {
        page(items, size, after, |n| *n, |n| n.to_string())
    }

    #[test]
    fn pages_cover_everything_once() {
        let all: Vec<u32> = (1..=5).collect();
        assert_eq!(
            by_number(all.clone(), 0, None),
            (all.clone(), String::new())
        );
        assert_eq!(
            by_number(all.clone(), 9, None),
            (all.clone(), String::new())
        );
        assert_eq!(by_number(all.clone(), 2, None), (vec![1, 2], "2".into()));
        assert_eq!(by_number(all.clone(), 2, Some(4)), (vec![5], String::new()));
        assert_eq!(by_number(all.clone(), 2, Some(9)), (vec![], String::new()));
        assert_eq!(by_number(vec![], 2, None), (vec![], String::new()));
        // A full last page has no next token only if nothing follows it.
        assert_eq!(by_number(all, 5, None).1, "");
    }

    #[test]
    fn member_tokens_round_trip_users_with_colons() {
        let member = RoomMember {
            user: "a:b:c".into(),
            session_id: 42,
            node: String::new(),
        };
        assert_eq!(
            parse_member_token(&member_token(&member)).unwrap(),
            Some(("a:b:c".to_string(), 42))
        );
        assert_eq!(parse_member_token("").unwrap(), None);
        for bad in ["x", "x:ada", ":ada", "-1:ada"] {
            assert!(parse_member_token(bad).is_err(), "{bad}");
        }
    }
}
