//! A throwaway certificate authority for TLS tests: a CA and a server
//! certificate it signed for `127.0.0.1` and `localhost`, written as PEM
//! files to a temp dir, and clients that trust that CA and nothing else.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

pub struct TestCa {
    /// The CA's certificate (PEM), the only root a test client trusts.
    pub ca_pem: String,
    /// `ca.pem`, `cert.pem` (the server's) and `key.pem` (its private key).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    dir: tempfile::TempDir,
}

impl TestCa {
    /// A new CA (named `name`) and a server certificate it signed.
    pub fn new(name: &str) -> TestCa {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "vman test server");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_pem = ca_cert.pem();
        TestCa {
            ca_file: write("ca.pem", &ca_pem),
            cert_file: write("cert.pem", &server_cert.pem()),
            key_file: write("key.pem", &server_key.serialize_pem()),
            ca_pem,
            dir,
        }
    }

    /// The temp dir holding the PEM files (other test files may go there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets `[tls]` to this CA's server certificate and key.
    pub fn configure(&self, config: &mut vman::config::Config) {
        config.tls.cert = Some(self.cert_file.clone());
        config.tls.key = Some(self.key_file.clone());
    }

    /// An HTTP client that trusts this CA and no other root.
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    /// A rustls client config (ring provider) that trusts this CA and no
    /// other root, for tokio-tungstenite's `Connector::Rustls`.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}
