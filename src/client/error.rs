//! [`ClientError`]: why a request of the client library, or the client itself, failed. Every
//! variant reads as one line, causes included, so a program can print it as it is.

use tonic::Code;

/// A failed request or a client that stopped. Cloneable: one fatal error ends every request
/// still waiting as well as the event stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The address is neither `host:port` nor an `http://` or `https://` URL.
    #[error("invalid server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// The first connection could not be made (later ones are retried).
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The server answered this request with an ERROR (`code` is the contract's, e.g.
    /// `rate_limited`); the client carries on.
    #[error("{code} ({room}): {reason}")]
    Refused {
        code: String,
        room: String,
        reason: String,
    },
    /// The server ended the session with a status the client does not retry
    /// (PERMISSION_DENIED, INVALID_ARGUMENT, UNIMPLEMENTED).
    #[error("the server ended the session: {}: {message}", code_name(*.code))]
    Ended { code: Code, message: String },
    /// The server refused the token, and a fresh one from the token callback as well (or
    /// there is no callback to ask).
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The token callback failed.
    #[error("cannot get a token: {0}")]
    Token(String),
    /// A CHAT over the client's `max_content_bytes`, refused before it is sent.
    #[error("content is {len} bytes, over the client's limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The client was closed (or stopped on an earlier error) before the request was answered.
    #[error("the client is closed")]
    Closed,
}

/// A gRPC code as the specification spells it (`PERMISSION_DENIED`), as in the README's
/// protocol table.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `error` and its sources on one line, `: `-separated (tonic's transport errors keep the
/// useful part, such as "Connection refused", in their sources).
pub(crate) fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !line.contains(&cause_text) {
            line.push_str(": ");
            line.push_str(&cause_text);
        }
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_session_names_the_code_as_grpc_spells_it() {
        let error = ClientError::Ended {
            code: Code::PermissionDenied,
            message: "kicked".into(),
        };
        assert_eq!(
            error.to_string(),
            "the server ended the session: PERMISSION_DENIED: kicked"
        );
    }

    #[test]
    fn one_line_joins_the_causes_without_repeating_them() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nsecond");
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(one_line(&Outer(io)), "transport error: refused second");
    }
}
