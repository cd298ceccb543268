//! [`ServerAddress`]: the server's address as a user writes it (`host:port`, `http://…`,
//! `https://…`) turned into the URI tonic dials, with whether it speaks TLS.

use http::Uri;

use super::error::ClientError;

/// A validated server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddress {
    /// `http://authority` or `https://authority`.
    pub(crate) uri: String,
    pub(crate) tls: bool,
}

impl ServerAddress {
    /// `address` as given; `tls_configured` when the options carry TLS settings (a bare
    /// `host:port` then means https).
    pub(crate) fn parse(address: &str, tls_configured: bool) -> Result<ServerAddress, ClientError> {
        let invalid = |reason: &str| ClientError::Address {
            address: address.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = address.trim();
        let (tls, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
                if tls_configured {
                    return Err(invalid("TLS settings were given: use https://"));
                }
                (false, rest)
            }
            Some((scheme, _)) => {
                return Err(invalid(&format!(
                    "unsupported scheme {scheme:?}: use host:port, http:// or https://"
                )));
            }
            None => {
                let port = trimmed.rsplit_once(':').map(|(_, port)| port);
                if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                    return Err(invalid(
                        "expected host:port (or an http:// or https:// URL)",
                    ));
                }
                (tls_configured, trimmed)
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(invalid("expected host:port, without a path"));
        }
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{authority}");
        uri.parse::<Uri>()
            .map_err(|e| invalid(&format!("not a valid address: {e}")))?;
        Ok(ServerAddress { uri, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(address: &str) -> (String, bool) {
        let parsed = ServerAddress::parse(address, false).unwrap();
        (parsed.uri, parsed.tls)
    }

    #[test]
    fn host_port_and_urls() {
        assert_eq!(
            parsed("127.0.0.1:50051"),
            ("http://127.0.0.1:50051".into(), false)
        );
        assert_eq!(parsed("localhost:1"), ("http://localhost:1".into(), false));
        assert_eq!(parsed("[::1]:50051"), ("http://[::1]:50051".into(), false));
        assert_eq!(parsed("http://h:9/"), ("http://h:9".into(), false));
        assert_eq!(
            parsed("HTTPS://chat.example:443"),
            ("https://chat.example:443".into(), true)
        );
        assert_eq!(
            parsed("https://chat.example"),
            ("https://chat.example".into(), true)
        );
        let tls = ServerAddress::parse("h:1", true).unwrap();
        assert_eq!((tls.uri.as_str(), tls.tls), ("https://h:1", true));
    }

    #[test]
    fn refusals_say_what_is_expected() {
        for (address, says) in [
            ("localhost", "expected host:port"),
            ("h:port", "expected host:port"),
            ("h:99999", "expected host:port"),
            ("ftp://h:1", "unsupported scheme \"ftp\""),
            ("http://h:1/chat", "without a path"),
            ("http://", "without a path"),
            ("", "expected host:port"),
            ("two words:1", "not a valid address"),
        ] {
            let error = ServerAddress::parse(address, false)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{address:?}: {error}");
        }
        let error = ServerAddress::parse("http://h:1", true).unwrap_err();
        assert!(error.to_string().contains("use https://"), "{error}");
    }
}
