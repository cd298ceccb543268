//! [`Link`]: opening one `ChatStream` to the server (a fresh TCP/TLS connection each time, so
//! a connection that went silent is never reused) with the current bearer token, and
//! [`Failure`]: what a failed or broken stream means for the client — retry, refresh the
//! token once, or stop.

use std::time::Duration;

use tokio::{sync::mpsc, time::timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, Streaming, metadata::MetadataValue, transport::Endpoint};

use super::{
    address::ServerAddress,
    error::{ClientError, code_name, one_line},
    options::{ClientOptions, TokenSource},
};
use crate::proto::{Message, chat_service_client::ChatServiceClient};

/// Requests buffered between the driver and the HTTP/2 stream.
const REQUEST_BUFFER: usize = 32;

/// One open stream: requests in, replies out.
pub(crate) struct Connection {
    /// `None` once half-closed.
    pub(crate) tx: Option<mpsc::Sender<Message>>,
    pub(crate) rx: Streaming<Message>,
}

/// Why a stream could not be opened or broke.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Transport trouble or a status worth another attempt after a backoff.
    Retry(String),
    /// UNAUTHENTICATED: a fresh token may help, once.
    Unauthenticated(String),
    /// Retrying would not help.
    Fatal(ClientError),
}

impl Failure {
    /// PERMISSION_DENIED (e.g. kicked), INVALID_ARGUMENT (the client sent something the server
    /// cannot read) and UNIMPLEMENTED (not a chat server) end the client; UNAUTHENTICATED asks
    /// for a fresh token; everything else (UNAVAILABLE, transport errors, a reset stream,
    /// RESOURCE_EXHAUSTED from a limit or the slow-consumer rule) is retried.
    pub(crate) fn from_status(status: &Status) -> Failure {
        let code = status.code();
        let message = status.message().replace(['\n', '\r'], " ");
        match code {
            Code::Unauthenticated => Failure::Unauthenticated(message),
            Code::PermissionDenied | Code::InvalidArgument | Code::Unimplemented => {
                Failure::Fatal(ClientError::Ended { code, message })
            }
            _ if message.is_empty() => Failure::Retry(code_name(code).to_string()),
            _ => Failure::Retry(format!("{}: {message}", code_name(code))),
        }
    }
}

impl Failure {
    /// The error of a client that could not open its first stream to `address`.
    pub(crate) fn into_error(self, address: &str) -> ClientError {
        match self {
            Failure::Retry(reason) => ClientError::Connect {
                address: address.to_string(),
                reason,
            },
            Failure::Unauthenticated(reason) => ClientError::Unauthenticated(reason),
            Failure::Fatal(error) => error,
        }
    }
}

/// What it takes to open a stream, and the token in use.
pub(crate) struct Link {
    address: String,
    endpoint: Endpoint,
    connect_timeout: Duration,
    source: Option<TokenSource>,
    token: Option<String>,
    /// The token was fetched because the previous one was refused, and no stream has taken
    /// it yet: if it is refused as well, the client gives up.
    fresh_unproven: bool,
}

impl Link {
    pub(crate) fn new(options: &ClientOptions) -> Result<Link, ClientError> {
        let address = ServerAddress::parse(&options.address, options.tls.is_some())?;
        let invalid = |e: tonic::transport::Error| ClientError::Address {
            address: options.address.clone(),
            reason: one_line(&e),
        };
        let mut endpoint = Endpoint::from_shared(address.uri)
            .map_err(invalid)?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true);
        if address.tls {
            let tls = options
                .tls
                .clone()
                .unwrap_or_else(|| tonic::transport::ClientTlsConfig::new().with_enabled_roots());
            endpoint = endpoint.tls_config(tls).map_err(invalid)?;
        }
        Ok(Link {
            address: options.address.clone(),
            endpoint,
            connect_timeout: options.connect_timeout,
            source: options.token.clone(),
            token: None,
            fresh_unproven: false,
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Opens a stream on a new connection; the stream is open once the server has accepted
    /// it (its response headers arrived), token included.
    pub(crate) async fn open(&mut self) -> Result<Connection, Failure> {
        if self.token.is_none()
            && let Some(source) = &self.source
        {
            let token = source
                .fetch()
                .await
                .map_err(|e| Failure::Fatal(ClientError::Token(e)))?;
            self.token = Some(token);
        }
        let transport = |e: tonic::transport::Error| Failure::Retry(one_line(&e));
        let channel = timeout(self.connect_timeout, self.endpoint.connect())
            .await
            .map_err(|_| {
                Failure::Retry(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(transport)?;
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.token {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                Failure::Fatal(ClientError::Token(
                    "the token is not a valid header value".into(),
                ))
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let opened = timeout(
            self.connect_timeout,
            ChatServiceClient::new(channel).chat_stream(request),
        )
        .await
        .map_err(|_| Failure::Retry("the server did not open the stream in time".into()))?;
        let rx = opened
            .map_err(|status| Failure::from_status(&status))?
            .into_inner();
        self.fresh_unproven = false;
        Ok(Connection { tx: Some(tx), rx })
    }

    /// [`Link::open`], asking the token callback for a fresh token once if the server refuses
    /// the one in use.
    pub(crate) async fn open_refreshing(&mut self) -> Result<Connection, Failure> {
        loop {
            match self.open().await {
                // The second refusal in a row makes `refresh` fail, which ends the loop.
                Err(Failure::Unauthenticated(reason)) => {
                    self.refresh(&reason).await.map_err(Failure::Fatal)?;
                }
                opened => return opened,
            }
        }
    }

    /// The server refused the token (`reason`): fetches a fresh one, unless the current one
    /// is already fresh and unproven, or there is nobody to ask.
    pub(crate) async fn refresh(&mut self, reason: &str) -> Result<(), ClientError> {
        let Some(source) = &self.source else {
            return Err(ClientError::Unauthenticated(reason.to_string()));
        };
        if self.fresh_unproven {
            return Err(ClientError::Unauthenticated(format!(
                "a fresh token was refused too: {reason}"
            )));
        }
        self.token = Some(source.fetch().await.map_err(ClientError::Token)?);
        self.fresh_unproven = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_statuses_are_retried() {
        let retried = [
            Status::unavailable("server shutting down"),
            Status::unavailable("idle timeout"),
            Status::resource_exhausted("slow consumer"),
            Status::cancelled(""),
            Status::unknown("h2 protocol error"),
            Status::internal("connection reset"),
        ];
        for status in retried {
            assert!(
                matches!(Failure::from_status(&status), Failure::Retry(_)),
                "{status:?}"
            );
        }
        assert_eq!(
            Failure::from_status(&Status::unavailable("server shutting down")),
            Failure::Retry("UNAVAILABLE: server shutting down".into())
        );
        assert_eq!(
            Failure::from_status(&Status::unauthenticated("token expired")),
            Failure::Unauthenticated("token expired".into())
        );
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::Unimplemented,
        ] {
            let failure = Failure::from_status(&Status::new(code, "no"));
            assert!(
                matches!(failure, Failure::Fatal(ClientError::Ended { .. })),
                "{code:?}"
            );
        }
    }
}
