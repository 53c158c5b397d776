//! Serving over TLS (https and wss) with rustls and its `ring` crypto
//! provider. `[tls]` in the config names a PEM certificate chain and its
//! private key; `load` reads and checks them (at config validation and again
//! when the server starts), and `TlsListener` is the `axum::serve` listener
//! that hands axum only connections whose handshake is done, so plain and TLS
//! serving share the same router, upgrades and graceful shutdown.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take over its TLS handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is wrong with the TLS files: the config key of the file at fault
/// (`tls.cert` or `tls.key`), its path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path:?}: {reason}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Reads the certificate chain and the private key (PEM) and builds the
/// rustls server config: the key must match the chain's first certificate.
/// Only HTTP/1.1 is offered (ALPN): axum serves websockets over HTTP/2 only
/// on routes that accept CONNECT, and `/graphql/ws` is a GET route, so a
/// client that picked h2 could not open the websocket.
pub fn load(cert: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsFileError> {
    let bad = |key: &'static str, reason: String| TlsFileError {
        key,
        path: if key == "tls.cert" { cert } else { key_file }.to_path_buf(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| bad("tls.cert", format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("tls.cert", format!("is not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            "tls.cert",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key_pem =
        std::fs::read(key_file).map_err(|e| bad("tls.key", format!("cannot read: {e}")))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        bad(
            "tls.key",
            format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls.cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => bad(
                "tls.key",
                "does not match the certificate in tls.cert".into(),
            ),
            rustls::Error::InvalidCertificate(e) => bad(
                "tls.cert",
                format!("its first certificate is not a valid X.509 certificate: {e}"),
            ),
            e => bad("tls.key", format!("cannot be used with tls.cert: {e}")),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out TLS-handshaken. Handshakes run
/// in their own tasks (a slow client holds up no one), each bounded by
/// [`HANDSHAKE_TIMEOUT`]; a failed one is logged at debug and dropped.
/// Dropping the listener (axum does when shutdown begins) stops accepting
/// and abandons the handshakes in flight.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(config), sender));
        Ok(TlsListener {
            local_addr,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(
    mut listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            // axum's accept for a TcpListener logs and retries on errors.
            (stream, peer) = axum::serve::Listener::accept(&mut listener) => {
                crate::server::no_delay(&stream);
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            // The receiver is gone only when serving ends.
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            // Reap finished handshakes so the set does not grow.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            () = ready.closed() => return,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ends only when this listener is dropped
            // (or panics): no connection comes any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each file's fault is put on its own key.
    #[test]
    fn each_fault_names_the_file_it_is_in() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = write("cert.pem", &params.self_signed(&key).unwrap().pem());
        let key_file = write("key.pem", &key.serialize_pem());
        load(&cert, &key_file).expect("a matching certificate and key");

        let junk = write(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let other_key = write(
            "other.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let cases = [
            (&junk, &key_file, "tls.cert", "not a valid X.509"),
            (&cert, &other_key, "tls.key", "does not match"),
            (&cert, &cert, "tls.key", "no PEM private key"),
            (&key_file, &key_file, "tls.cert", "no PEM certificate"),
        ];
        for (cert, key, named, reason) in cases {
            let e = load(cert, key).expect_err(reason);
            assert_eq!(e.key, named, "{e}");
            assert!(e.reason.contains(reason), "{e}");
            let path = if named == "tls.cert" { cert } else { key };
            assert_eq!(&e.path, path, "{e}");
        }
    }
}
