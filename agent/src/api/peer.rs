//! Who is at the other end of a verified TLS connection: what the remote listener
//! (`api::tls`) puts in every request's extensions, and what authorization and the
//! per-connection limits read there. On its own, below both, so neither depends on the other.

use std::net::SocketAddr;

/// Who is at the other end of a verified TLS connection; in every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct TlsPeer {
    pub(crate) remote: SocketAddr,
    /// The common name of the verified client certificate.
    pub(crate) name: String,
}
