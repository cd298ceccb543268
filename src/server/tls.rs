//! Building the TLS acceptor from `[server.tls]`. Read once, when serving starts: a changed
//! certificate needs a restart.

use std::sync::Arc;

use super::ServerError;

/// The TLS acceptor of `[server.tls]`: certificate chain and key, the CA that client
/// certificates must chain to when mutual TLS is on, and ALPN `h2`.
pub(super) fn tls_acceptor(
    tls: &crate::config::TlsConfig,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use tokio_rustls::rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    let invalid = |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(&tls.cert_path.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| invalid(&tls.key_path.display().to_string(), &e))?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let ca_certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(&ca.display().to_string(), &e))?;
            roots.add_parsable_certificates(ca_certs);
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| invalid("client_ca_path", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
