//! The remote listener's transport: mutual TLS over TCP, TLS 1.3 only, with rustls on the ring
//! provider. It owns loading the PEM files, the handshake, and turning a verified client
//! certificate into the caller's name ([`TlsPeer`], which tonic puts in every request's
//! extensions); and, for the CLI, the client side of the same handshake.
//!
//! The agent runs the handshake itself rather than through tonic's `ServerTlsConfig`, which
//! only logs a failed handshake at debug level: here every client refused for its certificate
//! (none, another CA, expired) is logged and written to the audit log with its address, within
//! its source's rate (`api::refusals`), and a source beyond it is closed before any TLS work.
//! A connection whose certificate carries no common name is closed at once: it has no
//! identity the policy could name.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::{
    rustls::{
        self,
        crypto::ring,
        pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{server::Connected, Certificate, ClientTlsConfig, Identity};
use tracing::{debug, warn};

pub(crate) use super::peer::TlsPeer;
use super::{
    limits::{ListenerLimits, Tally},
    refusals::{Refusals, Source},
};
use crate::monitor::counters::Limit;

/// How long a refused client has to read its alert and close before the agent closes.
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub(crate) enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} is not a usable {what}: {reason} (expected PEM, as `faultline certs` writes it)"
    )]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the client CA {path} cannot verify client certificates: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("the agent's certificate and key do not make a TLS identity: {0}")]
    Identity(#[source] rustls::Error),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("it holds no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The agent's side: its certificate and key, and the CA client certificates must chain to.
#[derive(Clone)]
pub(crate) struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    pub(crate) fn load(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        let chain = certificates(&read(cert, "certificate")?, cert, "certificate")?;
        let key = private_key(&read(key, "private key")?, key)?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(&read(client_ca, "client CA")?, client_ca, "client CA")? {
            roots.add(ca).map_err(|e| TlsError::ClientCa {
                path: client_ca.to_owned(),
                reason: e.to_string(),
            })?;
        }
        let provider = Arc::new(ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: client_ca.to_owned(),
                    reason: e.to_string(),
                })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Identity)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(TlsError::Identity)?;
        // gRPC is HTTP/2; clients insist on negotiating it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// A TLS connection whose client certificate the handshake verified.
pub(crate) struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: TlsPeer,
    /// Its place among the connections open at once, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and yields those whose handshake verified a client
/// certificate with a common name. Refusals go to `refusals`, which logs and audits them
/// within each source's rate; a source under a penalty has its connections closed at once.
/// Connections beyond `limits` are closed at once, and counted. Stops accepting when the
/// stream is dropped (the server stopped).
pub(crate) fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    limits: ListenerLimits,
    refusals: Arc<Refusals>,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = TlsAcceptor::from(tls.config);
    let ListenerLimits {
        max_connections,
        max_handshakes,
        handshake_timeout,
    } = limits;
    let per_source_max = limits.handshakes_per_source();
    tokio::spawn(async move {
        let connections = Arc::new(Semaphore::new(max_connections));
        let handshakes = Arc::new(Semaphore::new(max_handshakes));
        // Handshakes under way per source, so that one source cannot take every slot.
        let per_source = Tally::<Source>::new();
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        warn!(error = %e, "the remote listener cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // Closed before any TLS work: a source that keeps failing costs an accept and a
            // close, and gets neither a handshake nor a line.
            if refusals.penalized(remote) {
                continue;
            }
            // Limits close a connection with a count, not a line each: a flood must not turn
            // into one of log lines.
            let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
                refusals.counters().limited(Limit::Connections);
                debug!(peer = %remote, "{max_connections} TLS connections are open (serve --max-connections); closing this one");
                continue;
            };
            let Ok(share) = per_source.claim(Source::ip(remote.ip()), per_source_max) else {
                refusals.counters().limited(Limit::SourceHandshakes);
                debug!(peer = %remote, "{per_source_max} TLS handshakes from this source are under way; closing this connection");
                continue;
            };
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                refusals.counters().limited(Limit::Handshakes);
                debug!(peer = %remote, "{max_handshakes} TLS handshakes are under way (serve --max-handshakes); closing this connection");
                continue;
            };
            // gRPC exchanges small frames; Nagle's delay would only add latency.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, refusals) = (acceptor.clone(), tx.clone(), Arc::clone(&refusals));
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = acceptor.accept(tcp).into_fallible();
                let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err((e, tcp))) => {
                        drop(share);
                        refused(&refusals, remote, &e);
                        return linger(tcp).await;
                    }
                    Err(_) => {
                        refusals.counters().limited(Limit::HandshakeTimeout);
                        refusals.handshake_failed(
                            remote,
                            &format!(
                                "TLS handshake not finished within {handshake_timeout:?} (serve \
                                 --handshake-timeout); closed"
                            ),
                        );
                        return;
                    }
                };
                drop(share);
                let name = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(common_name);
                let Some(name) = name else {
                    let reason = "refused a TLS client: its certificate has no subject common \
                                  name, which is the identity the policy names";
                    refusals.handshake_refused(remote, reason.to_owned());
                    return;
                };
                let peer = TlsPeer { remote, name };
                // A closed channel: the server is stopping, and the connection goes with it.
                let _ = tx
                    .send(Ok(TlsConnection {
                        stream,
                        peer,
                        _slot: slot,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A failed handshake. Certificate refusals are what the audit log is for; anything else
/// (a port scan, a client speaking plain HTTP) only goes to the debug log, but counts towards
/// the source's rate all the same.
fn refused(refusals: &Refusals, remote: SocketAddr, error: &io::Error) {
    let tls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(
            e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) => refusals.handshake_refused(remote, format!("refused at the TLS handshake: {e}")),
        _ => refusals.handshake_failed(remote, &format!("TLS handshake failed: {error}")),
    }
}

/// Closes a refused connection without a reset: the client has usually sent its first
/// request behind its certificate, and closing with unread data would send an RST that can
/// destroy the alert before the client reads why it was refused.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = tcp.read(&mut sink).await {}
    })
    .await;
}

/// The subject's common name, the identity of a client certificate.
pub(crate) fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_owned()).filter(|n| !n.is_empty())
}

/// The CLI's side: its certificate and key, and the CA the agent's certificate must chain to.
#[derive(Debug, Clone)]
pub(crate) struct ClientTls {
    config: ClientTlsConfig,
}

impl ClientTls {
    /// Reads and checks the three PEM files, so that a wrong path or file is reported as such
    /// rather than as a failed connection.
    pub(crate) fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert, "client certificate")?;
        certificates(&cert_pem, cert, "client certificate")?;
        let key_pem = read(key, "private key")?;
        private_key(&key_pem, key)?;
        let ca_pem = read(ca, "CA certificate")?;
        certificates(&ca_pem, ca, "CA certificate")?;
        Ok(Self {
            config: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(Identity::from_pem(cert_pem, key_pem)),
        })
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_the_identity() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));

        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), None);
    }

    #[test]
    fn files_that_are_not_pem_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bogus = dir.path().join("agent.pem");
        std::fs::write(&bogus, "not a certificate").expect("write");
        let e = ServerTls::load(&bogus, &bogus, &bogus)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("agent.pem is not a usable certificate"),
            "{e}"
        );
        let e =
            ClientTls::load(&dir.path().join("missing.pem"), &bogus, &bogus).expect_err("refused");
        assert!(
            e.to_string().contains("cannot read the client certificate"),
            "{e}"
        );
    }
}
