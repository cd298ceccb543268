//! What comes back from an operator request: each node's [`WireAnswer`] (JSON on the caller's
//! answer channel) and the [`Tally`] the caller sums them into.

use serde::{Deserialize, Serialize};
use tonic::Status;

/// One node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct WireAnswer {
    /// The named room was open on the node (always true for a server-wide kick).
    pub(super) found: bool,
    /// Sessions kicked, or members removed.
    pub(super) count: u64,
    /// Why the node could not carry the action out: a gRPC status code and its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<(i32, String)>,
}

impl WireAnswer {
    pub(super) fn failed(status: &Status) -> WireAnswer {
        WireAnswer {
            error: Some((status.code() as i32, status.message().to_string())),
            ..WireAnswer::default()
        }
    }
}

/// What the nodes did, summed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Some node had the named room open.
    pub found: bool,
    pub count: usize,
    /// Nodes that carried the action out (nodes that failed are not counted).
    pub nodes: u32,
}

impl Tally {
    /// A single node's outcome (memory mode).
    pub(crate) fn one(outcome: Option<usize>) -> Tally {
        Tally {
            found: outcome.is_some(),
            count: outcome.unwrap_or(0),
            nodes: 1,
        }
    }

    pub(super) fn add(&mut self, answer: &WireAnswer) {
        self.found |= answer.found;
        self.count += usize::try_from(answer.count).unwrap_or(usize::MAX);
        self.nodes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_add_up() {
        let mut tally = Tally::default();
        tally.add(&WireAnswer {
            found: false,
            count: 0,
            error: None,
        });
        tally.add(&WireAnswer {
            found: true,
            count: 3,
            error: None,
        });
        assert_eq!(
            tally,
            Tally {
                found: true,
                count: 3,
                nodes: 2
            }
        );
        assert_eq!(
            Tally::one(None),
            Tally {
                found: false,
                count: 0,
                nodes: 1
            }
        );
    }
}
