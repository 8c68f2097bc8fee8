//! `faultline certs`: the certificates of the remote listener, made with rcgen. A CA, the
//! agent's certificate (its host name and addresses, which clients check) and clients'
//! certificates (their common name is the identity the policy names). Keys are ECDSA P-256,
//! written mode 0600; nothing is ever overwritten, least of all a key.
//!
//! `agent` and `client` copy the CA certificate (never its key) next to what they write, so
//! each output directory holds all one side needs: `--tls-cert`, `--tls-key` and the CA.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::output::Failure;

/// Certificates start this long before they are made: a client or agent whose clock is a
/// little behind would otherwise refuse a certificate "not yet valid".
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// X.520's upper bound for a common name.
const MAX_NAME: usize = 64;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A new certificate authority: OUT/ca.pem and OUT/ca-key.pem (keep the key secret)
    Ca(CaOptions),
    /// The agent's certificate, signed by the CA: OUT/agent.pem, OUT/agent-key.pem, OUT/ca.pem
    Agent(AgentOptions),
    /// A client's certificate, signed by the CA: OUT/client.pem, OUT/client-key.pem,
    /// OUT/ca.pem; its common name (--name) is the identity the agent's policy names
    Client(ClientOptions),
}

#[derive(Debug, Args)]
pub(crate) struct Validity {
    /// How many days the certificate is valid, from --valid-from [default: 3650 for a CA, 365
    /// for an agent, 90 for a client]
    #[arg(long, value_name = "N", conflicts_with = "not_after")]
    pub(crate) days: Option<u32>,
    /// Start of validity, RFC 3339 (2026-01-01T00:00:00Z) [default: now, less 5 minutes of
    /// clock skew]
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    pub(crate) valid_from: Option<SystemTime>,
    /// End of validity, RFC 3339, instead of --days
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    pub(crate) not_after: Option<SystemTime>,
}

#[derive(Debug, Args)]
pub(crate) struct CaOptions {
    /// The directory to write to (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// The CA's common name
    #[arg(long, default_value = "faultline CA")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) validity: Validity,
}

#[derive(Debug, Args)]
pub(crate) struct AgentOptions {
    /// The directory holding ca.pem and ca-key.pem (from `faultline certs ca`)
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_dir: PathBuf,
    /// The agent's host name, as clients write it in --agent https://HOST:PORT (its common
    /// name and a DNS name of the certificate; an address is taken as an IP address)
    #[arg(long, value_name = "HOST")]
    pub(crate) name: String,
    /// An address clients may reach the agent at; repeatable
    #[arg(long = "ip", value_name = "IP")]
    pub(crate) ips: Vec<IpAddr>,
    /// Another DNS name of the agent; repeatable
    #[arg(long = "dns", value_name = "NAME")]
    pub(crate) dns_names: Vec<String>,
    /// The directory to write to (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) validity: Validity,
}

#[derive(Debug, Args)]
pub(crate) struct ClientOptions {
    /// The directory holding ca.pem and ca-key.pem (from `faultline certs ca`)
    #[arg(long, value_name = "DIR")]
    pub(crate) ca_dir: PathBuf,
    /// The client's identity: the certificate's common name, as the policy names it
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// The directory to write to (created if missing)
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) validity: Validity,
}

fn rfc3339(text: &str) -> Result<SystemTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e} (e.g. 2026-01-01T00:00:00Z)"))
}

impl Validity {
    fn window(&self, default_days: u32) -> Result<(SystemTime, SystemTime), Failure> {
        let from = self
            .valid_from
            .unwrap_or_else(|| SystemTime::now() - CLOCK_SKEW);
        let until = match self.not_after {
            Some(until) => until,
            None => from + DAY * self.days.unwrap_or(default_days),
        };
        if until <= from {
            return Err(Failure::usage(format!(
                "the certificate would end ({}) before it starts ({}); give a later --not-after \
                 or at least --days 1",
                humantime::format_rfc3339_seconds(until),
                humantime::format_rfc3339_seconds(from)
            )));
        }
        Ok((from, until))
    }

    fn apply(&self, params: &mut CertificateParams, default_days: u32) -> Result<(), Failure> {
        let (from, until) = self.window(default_days)?;
        params.not_before = OffsetDateTime::from(from);
        params.not_after = OffsetDateTime::from(until);
        Ok(())
    }
}

pub(crate) fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Ca(o) => ca(o),
        Command::Agent(o) => agent(o),
        Command::Client(o) => client(o),
    }
}

fn check_name(name: &str, flag: &str) -> Result<(), Failure> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Failure::usage(format!(
            "{flag} {name:?} is not accepted: 1-{MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

fn subject(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn internal(what: &str) -> impl Fn(rcgen::Error) -> Failure + '_ {
    move |e| Failure::internal(format!("cannot make {what}: {e}"))
}

fn ca(o: CaOptions) -> Result<(), Failure> {
    check_name(&o.name, "--name")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&o.name);
    // Signs end-entity certificates only: no intermediate CA below it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    o.validity.apply(&mut params, 3650)?;
    let key = KeyPair::generate().map_err(internal("the CA key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(internal("the CA certificate"))?;
    let files = [
        Output::certificate(o.out.join("ca.pem"), cert.pem()),
        Output::key(o.out.join("ca-key.pem"), key.serialize_pem()),
    ];
    write_all(&o.out, &files)?;
    println!(
        "CA {:?}, valid until {}",
        o.name,
        humantime::format_rfc3339_seconds(SystemTime::from(params.not_after))
    );
    Ok(())
}

/// The CA of `dir`: its certificate (PEM, copied next to what it signs) and the issuer.
fn load_ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), Failure> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| {
            Failure::usage(format!(
                "cannot read {}: {e} (`faultline certs ca --out {}` makes it)",
                path.display(),
                dir.display()
            ))
        })
    };
    let cert = read("ca.pem")?;
    let key = KeyPair::from_pem(&read("ca-key.pem")?).map_err(|e| {
        Failure::usage(format!(
            "{} is not a usable private key: {e}",
            dir.join("ca-key.pem").display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| {
        Failure::usage(format!(
            "{} is not a usable CA certificate: {e}",
            dir.join("ca.pem").display()
        ))
    })?;
    Ok((cert, issuer))
}

/// Signs an end-entity certificate for `name` and writes it, its key and the CA certificate.
fn leaf(
    ca_dir: &Path,
    out: &Path,
    file: &str,
    mut params: CertificateParams,
    name: &str,
) -> Result<SystemTime, Failure> {
    let (ca_pem, issuer) = load_ca(ca_dir)?;
    params.distinguished_name = subject(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(internal("a key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(internal("the certificate"))?;
    let files = [
        Output::certificate(out.join(format!("{file}.pem")), cert.pem()),
        Output::key(out.join(format!("{file}-key.pem")), key.serialize_pem()),
        Output::certificate(out.join("ca.pem"), ca_pem),
    ];
    write_all(out, &files)?;
    Ok(SystemTime::from(params.not_after))
}

fn agent(o: AgentOptions) -> Result<(), Failure> {
    check_name(&o.name, "--name")?;
    let names: Vec<String> = std::iter::once(o.name.clone())
        .chain(o.dns_names.iter().cloned())
        .chain(o.ips.iter().map(IpAddr::to_string))
        .collect();
    let mut params = CertificateParams::new(names).map_err(|e| {
        Failure::usage(format!(
            "--name {:?} / --dns: not a DNS name or address: {e}",
            o.name
        ))
    })?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    o.validity.apply(&mut params, 365)?;
    let until = leaf(&o.ca_dir, &o.out, "agent", params, &o.name)?;
    println!(
        "agent {:?}, valid until {}; serve with --tls-cert {} --tls-key {} --client-ca {}",
        o.name,
        humantime::format_rfc3339_seconds(until),
        o.out.join("agent.pem").display(),
        o.out.join("agent-key.pem").display(),
        o.out.join("ca.pem").display()
    );
    Ok(())
}

fn client(o: ClientOptions) -> Result<(), Failure> {
    check_name(&o.name, "--name")?;
    let mut params = CertificateParams::default();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    o.validity.apply(&mut params, 90)?;
    let until = leaf(&o.ca_dir, &o.out, "client", params, &o.name)?;
    println!(
        "client {:?}, valid until {}; connect with --tls-cert {} --tls-key {} --ca {}",
        o.name,
        humantime::format_rfc3339_seconds(until),
        o.out.join("client.pem").display(),
        o.out.join("client-key.pem").display(),
        o.out.join("ca.pem").display()
    );
    Ok(())
}

/// A file to write: certificates are public (0644), keys are not (0600).
struct Output {
    path: PathBuf,
    contents: String,
    mode: u32,
}

impl Output {
    fn certificate(path: PathBuf, contents: String) -> Self {
        Self {
            path,
            contents,
            mode: 0o644,
        }
    }

    fn key(path: PathBuf, contents: String) -> Self {
        Self {
            path,
            contents,
            mode: 0o600,
        }
    }
}

/// Writes every file, or none if any already exists (a copy of the same CA certificate is
/// fine: `--out` may be the CA's own directory).
fn write_all(dir: &Path, files: &[Output]) -> Result<(), Failure> {
    fs::create_dir_all(dir)
        .map_err(|e| Failure::internal(format!("cannot create {}: {e}", dir.display())))?;
    let mut todo = Vec::new();
    for file in files {
        match fs::read_to_string(&file.path) {
            Ok(existing) if existing == file.contents && file.mode != 0o600 => continue,
            Ok(_) => {
                return Err(Failure::usage(format!(
                    "{} already exists; faultline certs never overwrites a file (remove it, or \
                     write to another --out directory)",
                    file.path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => todo.push(file),
            Err(e) => {
                return Err(Failure::internal(format!(
                    "cannot check {}: {e}",
                    file.path.display()
                )))
            }
        }
    }
    for file in todo {
        let write = || -> std::io::Result<()> {
            // Created with its final mode: a key is never readable by others, not even briefly.
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&file.path)?;
            out.write_all(file.contents.as_bytes())?;
            out.sync_all()
        };
        write()
            .map_err(|e| Failure::internal(format!("cannot write {}: {e}", file.path.display())))?;
        println!("wrote {}", file.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn validity() -> Validity {
        Validity {
            days: None,
            valid_from: None,
            not_after: None,
        }
    }

    #[test]
    fn a_ca_signs_agents_and_clients_whose_keys_stay_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        ca(CaOptions {
            out: ca_dir.clone(),
            name: "test CA".to_owned(),
            validity: validity(),
        })
        .expect("CA");
        client(ClientOptions {
            ca_dir: ca_dir.clone(),
            name: "alice".to_owned(),
            out: dir.path().join("alice"),
            validity: Validity {
                days: None,
                valid_from: Some(rfc3339("2020-01-01T00:00:00Z").expect("time")),
                not_after: Some(rfc3339("2020-01-02T00:00:00+00:00").expect("time")),
            },
        })
        .expect("client");
        let pem = fs::read(dir.path().join("alice/client.pem")).expect("read");
        let der = rustls_pem(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        assert_eq!(
            crate::api::tls::common_name(&der.clone().into()).as_deref(),
            Some("alice")
        );
        assert_eq!(cert.validity().not_after.timestamp(), 1_577_923_200);
        assert_eq!(
            cert.issuer()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok()),
            Some("test CA")
        );
        for key in ["ca/ca-key.pem", "alice/client-key.pem"] {
            let mode = fs::metadata(dir.path().join(key))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // Written once: a second run refuses rather than replace a key.
        let again = client(ClientOptions {
            ca_dir,
            name: "alice".to_owned(),
            out: dir.path().join("alice"),
            validity: validity(),
        })
        .expect_err("refused");
        assert!(again.to_string().contains("never overwrites"), "{again}");
    }

    #[test]
    fn validity_must_end_after_it_starts() {
        let v = Validity {
            days: None,
            valid_from: Some(rfc3339("2030-01-01T00:00:00Z").expect("time")),
            not_after: Some(rfc3339("2020-01-01T00:00:00Z").expect("time")),
        };
        assert!(v.window(90).is_err());
        assert!(rfc3339("yesterday").is_err());
    }

    fn rustls_pem(pem: &[u8]) -> Vec<u8> {
        use tokio_rustls::rustls::pki_types::{pem::PemObject as _, CertificateDer};
        CertificateDer::from_pem_slice(pem)
            .expect("one certificate")
            .to_vec()
    }
}
