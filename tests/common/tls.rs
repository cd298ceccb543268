//! TLS for tests: a CA made with rcgen, leaf certificates it signs, and a test server that
//! serves TLS with one of them (optionally requiring client certificates from another CA).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::TestServer;

/// A CA, and leaf certificates it signs. PEM strings.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            cert_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn write(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

pub async fn tls_server(ca: &TestCa, client_ca: Option<&TestCa>, tag: &str) -> TestServer {
    tls_server_with(ca, client_ca, tag, "").await
}

/// A TLS server whose `[server]` table also holds `server_keys`.
pub async fn tls_server_with(
    ca: &TestCa,
    client_ca: Option<&TestCa>,
    tag: &str,
    server_keys: &str,
) -> TestServer {
    let (cert, key) = ca.leaf(&["localhost"]);
    let cert_path = write(&format!("{tag}-server.pem"), &cert);
    let key_path = write(&format!("{tag}-server.key"), &key);
    let mut toml = format!(
        "[server]\n{server_keys}\n[server.tls]\ncert_path = {:?}\nkey_path = {:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    if let Some(client_ca) = client_ca {
        let path = write(&format!("{tag}-clients-ca.pem"), &client_ca.cert_pem);
        toml.push_str(&format!(
            "client_ca_path = {:?}\n",
            path.display().to_string()
        ));
    }
    TestServer::start(&toml).await
}
