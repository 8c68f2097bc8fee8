//! How the CLI reaches the agent: its unix socket, or its remote listener over mutual TLS with
//! the client's certificate (--tls-cert, --tls-key) and the CA the agent's must chain to (--ca).

use tonic::transport::Channel;

use super::{args::Global, output::Failure};
use crate::api::{connect, connect_tls, tls::ClientTls, AgentAddress};

pub(crate) async fn channel(global: &Global) -> Result<Channel, Failure> {
    let address = AgentAddress::parse(&global.agent);
    let connected = match &address {
        AgentAddress::Tcp(url) if url.starts_with("https://") => {
            connect_tls(url, &client_tls(global, url)?).await
        }
        _ => connect(&address).await,
    };
    connected.map_err(|e| Failure::connect(&address, &e))
}

fn client_tls(global: &Global, url: &str) -> Result<ClientTls, Failure> {
    let (Some(cert), Some(key), Some(ca)) = (&global.tls_cert, &global.tls_key, &global.ca) else {
        let missing: Vec<&str> = [
            ("--tls-cert", global.tls_cert.is_none()),
            ("--tls-key", global.tls_key.is_none()),
            ("--ca", global.ca.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, absent)| absent.then_some(flag))
        .collect();
        return Err(Failure::usage(format!(
            "--agent {url} is an agent's mutual-TLS listener: it needs {} (or \
             FAULTLINE_TLS_CERT, FAULTLINE_TLS_KEY, FAULTLINE_CA); `faultline certs client` \
             makes a client certificate",
            missing.join(", ")
        )));
    };
    ClientTls::load(cert, key, ca).map_err(|e| Failure::usage(e.to_string()))
}
