//! Who may call what. It owns the caller's identity as the connection proves it, the policy
//! file that maps identities to roles, and every decision to let a call through or refuse it.
//!
//! Identity: on the unix socket, the uid the kernel reports for the connecting process
//! (SO_PEERCRED, which the client cannot forge); on the TLS listener, the common name of the
//! client certificate, which the handshake has already verified against the configured CA.
//!
//! Roles: `observer` reads (Get, List, Watch, Info, Metrics); `operator` also applies and
//! reverts faults, within the limits the policy gives it (fault kinds, duration, percent, memory,
//! disk) and never with `force`; `admin` may do everything. uid 0 on the unix socket is always admin:
//! root owns the agent, its state and this policy, so refusing it would protect nothing.
//! Without a policy file only root may call; every TLS client is refused.
//!
//! Decisions are taken in the service methods, not in an interceptor: an operator's limits
//! depend on the fault asked for, which an interceptor (headers only) cannot see.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;
use tonic::{transport::server::UdsConnectInfo, Request, Status};

use super::peer::TlsPeer;
use crate::{
    engine::ApplyRequest,
    faults::FaultSpec,
    units::{format_bytes, parse_bytes},
};

/// A caller, as its connection identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A process on the unix socket; the kernel reports its credentials.
    Unix { uid: u32, pid: Option<i32> },
    /// A client of the TLS listener whose certificate chains to the configured CA.
    Certificate { name: String, peer: SocketAddr },
}

impl Caller {
    /// How the identity was established, as the audit log names it.
    pub(crate) fn auth(&self) -> &'static str {
        match self {
            Caller::Unix { .. } => "unix-peer-credentials",
            Caller::Certificate { .. } => "tls-client-certificate",
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unix { uid, .. } => write!(f, "uid {uid}"),
            Caller::Certificate { name, .. } => f.write_str(name),
        }
    }
}

/// Finds who is calling from what the transport put in the request's extensions.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Denied> {
    if let Some(peer) = request.extensions().get::<TlsPeer>() {
        return Ok(Caller::Certificate {
            name: peer.name.clone(),
            peer: peer.remote,
        });
    }
    if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
        return match info.peer_cred {
            Some(cred) => Ok(Caller::Unix {
                uid: cred.uid(),
                pid: cred.pid(),
            }),
            None => Err(Denied {
                who: "a unix socket peer".to_owned(),
                role: None,
                reason: "the kernel did not report its credentials (SO_PEERCRED), so it cannot \
                         be identified"
                    .to_owned(),
            }),
        };
    }
    // Every listener the agent serves sets one of the two: this is a bug, refused all the same.
    Err(Denied {
        who: "an unidentified caller".to_owned(),
        role: None,
        reason: "its connection carries neither unix credentials nor a client certificate"
            .to_owned(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Observer,
    Operator,
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The calls the agent serves, as gRPC names them (without the package).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    Apply,
    Get,
    List,
    Watch,
    Revert,
    RevertAll,
    RenewLease,
    Info,
    Doctor,
    MetricsSnapshot,
    MetricsStream,
}

impl Rpc {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Rpc::Apply => "Faults/Apply",
            Rpc::Get => "Faults/Get",
            Rpc::List => "Faults/List",
            Rpc::Watch => "Faults/Watch",
            Rpc::Revert => "Faults/Revert",
            Rpc::RevertAll => "Faults/RevertAll",
            Rpc::RenewLease => "Faults/RenewLease",
            Rpc::Info => "Agent/Info",
            Rpc::Doctor => "Agent/Doctor",
            Rpc::MetricsSnapshot => "Metrics/Snapshot",
            Rpc::MetricsStream => "Metrics/Stream",
        }
    }

    /// Changes nothing: an observer may call it.
    fn reads_only(self) -> bool {
        // Renewing keeps a fault in place: as much a change as applying it.
        !matches!(
            self,
            Rpc::Apply | Rpc::Revert | Rpc::RevertAll | Rpc::RenewLease
        )
    }
}

/// A refused call: who, in which role, and the rule that refused it. Shown to the caller as
/// gRPC PermissionDenied and written to the audit log as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{who}{}: {reason}", .role.map(|r| format!(" ({r})")).unwrap_or_default())]
pub(crate) struct Denied {
    pub(crate) who: String,
    pub(crate) role: Option<Role>,
    pub(crate) reason: String,
}

impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        Status::permission_denied(denied.to_string())
    }
}

#[derive(Debug, Error)]
pub(crate) enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the line, the column and the field.
    #[error("policy file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("policy file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The policy file as written. Each role lists its members; the operator's section also holds
/// its limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    admin: Option<Members>,
    #[serde(default)]
    operator: Option<OperatorSection>,
    #[serde(default)]
    observer: Option<Members>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    /// Common names of client certificates.
    #[serde(default)]
    certificates: Vec<String>,
    /// Unix uids on the local socket.
    #[serde(default)]
    uids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorSection {
    #[serde(default)]
    certificates: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
    /// Required: an operator section that forgot it must not mean "every kind".
    #[serde(deserialize_with = "kind_names")]
    kinds: BTreeSet<&'static str>,
    #[serde(default, deserialize_with = "duration_text")]
    max_duration: Option<Duration>,
    #[serde(default, deserialize_with = "percent_value")]
    max_percent: Option<f64>,
    #[serde(default, deserialize_with = "size_text")]
    max_memory: Option<u64>,
    #[serde(default, deserialize_with = "size_text")]
    max_disk: Option<u64>,
}

/// Fault kinds as the policy names them: the `kind` of `faultline ls` (`delay` is `netem`).
fn kind_names<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<&'static str>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|name| {
            FaultSpec::KINDS
                .iter()
                .find(|kind| **kind == name)
                .copied()
                .ok_or_else(|| serde::de::Error::unknown_variant(&name, FaultSpec::KINDS))
        })
        .collect()
}

fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration: {e} (expected e.g. 30s, 10m, 1h)"
        ))
    })
}

fn percent_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let value = f64::deserialize(d)?;
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(Some(value))
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is out of range, expected 0 < max_percent <= 100"
        )))
    }
}

fn size_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_bytes(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// What an operator may apply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OperatorLimits {
    pub(crate) kinds: BTreeSet<&'static str>,
    pub(crate) max_duration: Option<Duration>,
    /// Of block and loss percent, netem loss, duplication and corruption, and CPU load.
    pub(crate) max_percent: Option<f64>,
    pub(crate) max_memory: Option<u64>,
    /// Of the disk space a fill or an I/O stress's file takes.
    pub(crate) max_disk: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    Certificate(String),
    Uid(u32),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Certificate(name) => write!(f, "certificate {name:?}"),
            Member::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    path: PathBuf,
    members: BTreeMap<Member, Role>,
    operator: OperatorLimits,
}

impl Policy {
    pub(crate) fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses policy text; `path` names it in errors.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let invalid = |reason: String| PolicyError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let mut members = BTreeMap::new();
        let (operator_members, operator) = match file.operator {
            Some(section) => (
                Members {
                    certificates: section.certificates,
                    uids: section.uids,
                },
                OperatorLimits {
                    kinds: section.kinds,
                    max_duration: section.max_duration,
                    max_percent: section.max_percent,
                    max_memory: section.max_memory,
                    max_disk: section.max_disk,
                },
            ),
            None => (
                Members::default(),
                OperatorLimits {
                    kinds: BTreeSet::new(),
                    max_duration: None,
                    max_percent: None,
                    max_memory: None,
                    max_disk: None,
                },
            ),
        };
        for (role, listed) in [
            (Role::Admin, file.admin.unwrap_or_default()),
            (Role::Operator, operator_members),
            (Role::Observer, file.observer.unwrap_or_default()),
        ] {
            let certificates = listed.certificates.into_iter().map(Member::Certificate);
            for member in certificates.chain(listed.uids.into_iter().map(Member::Uid)) {
                if let Member::Certificate(name) = &member {
                    if name.trim().is_empty() {
                        return Err(invalid(format!(
                            "[{role}] certificates: an empty name matches no certificate; use \
                             the common name the certificate was made with"
                        )));
                    }
                }
                if member == Member::Uid(0) && role != Role::Admin {
                    return Err(invalid(format!(
                        "[{role}] uids: uid 0 is always admin on the unix socket (root owns the \
                         agent); remove it from [{role}]"
                    )));
                }
                if let Some(other) = members.insert(member.clone(), role) {
                    return Err(invalid(format!(
                        "{member} is listed under both [{other}] and [{role}]; an identity has \
                         one role"
                    )));
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            members,
            operator,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The decisions: who has which role, and whether a call is within it.
#[derive(Debug, Clone)]
pub(crate) struct Authorizer {
    policy: Option<Policy>,
}

impl Authorizer {
    /// `None`: no policy file, only root may call.
    pub(crate) fn new(policy: Option<Policy>) -> Self {
        Self { policy }
    }

    /// The caller's role, or why it has none.
    pub(crate) fn role(&self, caller: &Caller) -> Result<Role, Denied> {
        let refuse = |reason: String| Denied {
            who: caller.to_string(),
            role: None,
            reason,
        };
        if let Caller::Unix { uid: 0, .. } = caller {
            return Ok(Role::Admin);
        }
        let member = match caller {
            Caller::Unix { uid, .. } => Member::Uid(*uid),
            Caller::Certificate { name, .. } => Member::Certificate(name.clone()),
        };
        let Some(policy) = &self.policy else {
            return Err(refuse(match caller {
                Caller::Unix { .. } => "the agent has no policy, so only root (uid 0) may call \
                                        it; map uids to roles in a policy file (faultline \
                                        serve --policy FILE)"
                    .to_owned(),
                Caller::Certificate { .. } => "the agent has no policy, so it refuses every TLS \
                                               client; map certificate names to roles in a \
                                               policy file (faultline serve --policy FILE)"
                    .to_owned(),
            }));
        };
        policy.members.get(&member).copied().ok_or_else(|| {
            refuse(format!(
                "no role in the policy {}; list {member} under [observer], [operator] or \
                 [admin] there",
                policy.path.display()
            ))
        })
    }

    /// May the caller make this call at all? Returns its role.
    pub(crate) fn authorize(&self, caller: &Caller, rpc: Rpc) -> Result<Role, Denied> {
        let role = self.role(caller)?;
        if role == Role::Observer && !rpc.reads_only() {
            return Err(Denied {
                who: caller.to_string(),
                role: Some(role),
                reason: format!(
                    "{} is not allowed: an observer may only read (Get, List, Watch, Info, \
                     Metrics)",
                    rpc.name()
                ),
            });
        }
        Ok(role)
    }

    /// Is this fault within what the caller's role may apply?
    pub(crate) fn check_apply(
        &self,
        caller: &Caller,
        role: Role,
        request: &ApplyRequest,
    ) -> Result<(), Denied> {
        let refuse = |reason: String| Denied {
            who: caller.to_string(),
            role: Some(role),
            reason,
        };
        match role {
            Role::Admin => return Ok(()),
            Role::Observer => return Err(refuse("Faults/Apply is not allowed".to_owned())),
            Role::Operator => {}
        }
        let limits = match &self.policy {
            Some(policy) => &policy.operator,
            // Only uid 0 has a role without a policy, and it is admin.
            None => return Err(refuse("the agent has no policy for operators".to_owned())),
        };
        if request.force {
            return Err(refuse(
                "force (overriding the safety guard) is not allowed; \
                 only an admin may force a fault"
                    .to_owned(),
            ));
        }
        let kind = request.spec.kind();
        if !limits.kinds.contains(kind) {
            let allowed: Vec<&str> = limits.kinds.iter().copied().collect();
            return Err(refuse(format!(
                "fault kind {kind} is not allowed (allowed: {})",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if let Some(max) = limits.max_duration {
            if request.duration > max {
                return Err(refuse(format!(
                    "duration {} is longer than the operator maximum of {}",
                    humantime::format_duration(request.duration),
                    humantime::format_duration(max)
                )));
            }
        }
        let demands = request.spec.family().demands();
        if let Some(max) = limits.max_percent {
            if let Some((what, value)) =
                demands.percents.into_iter().find(|(_, value)| *value > max)
            {
                return Err(refuse(format!(
                    "{what} {value}% is more than the operator maximum of {max}%"
                )));
            }
        }
        if let (Some(max), Some(bytes)) = (limits.max_memory, demands.memory) {
            if bytes > max {
                return Err(refuse(format!(
                    "memory {} is more than the operator maximum of {}",
                    format_bytes(bytes),
                    format_bytes(max)
                )));
            }
        }
        if let (Some(max), Some(bytes)) = (limits.max_disk, demands.disk) {
            if bytes > max {
                return Err(refuse(format!(
                    "disk space {} is more than the operator maximum of {}",
                    format_bytes(bytes),
                    format_bytes(max)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::faults::{
        stress::{CpuStressSpec, MemSize, MemoryStressSpec},
        BlockSpec, Direction, LossSpec, PacketMatch,
    };

    const POLICY: &str = r#"
        [admin]
        certificates = ["carol"]

        [operator]
        certificates = ["alice"]
        uids = [1000]
        kinds = ["block", "loss", "memory", "cpu", "disk_fill"]
        max_duration = "1m"
        max_percent = 50
        max_memory = "1GiB"
        max_disk = "5GiB"

        [observer]
        certificates = ["bob"]
        uids = [65534]
    "#;

    fn policy() -> Authorizer {
        Authorizer::new(Some(
            Policy::parse(Path::new("policy.toml"), POLICY).expect("the example parses"),
        ))
    }

    fn cert(name: &str) -> Caller {
        Caller::Certificate {
            name: name.to_owned(),
            peer: "10.0.0.2:40000".parse().expect("an address"),
        }
    }

    fn unix(uid: u32) -> Caller {
        Caller::Unix { uid, pid: Some(42) }
    }

    fn request(spec: FaultSpec, secs: u64) -> ApplyRequest {
        ApplyRequest {
            spec,
            duration: Duration::from_secs(secs),
            labels: BTreeMap::new(),
            dry_run: false,
            force: false,
            lease: None,
        }
    }

    fn block(percent: Option<f64>) -> FaultSpec {
        FaultSpec::Block(BlockSpec {
            direction: Direction::Ingress,
            matcher: PacketMatch::default(),
            reject: false,
            percent,
            device: None,
        })
    }

    fn denial(result: Result<(), Denied>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn roles_come_from_the_policy_and_root_is_always_admin() {
        let authz = policy();
        assert_eq!(authz.role(&cert("carol")), Ok(Role::Admin));
        assert_eq!(authz.role(&cert("alice")), Ok(Role::Operator));
        assert_eq!(authz.role(&unix(1000)), Ok(Role::Operator));
        assert_eq!(authz.role(&unix(65534)), Ok(Role::Observer));
        assert_eq!(authz.role(&unix(0)), Ok(Role::Admin));
        let e = authz.role(&cert("mallory")).expect_err("not in the policy");
        assert_eq!(
            e.to_string(),
            "mallory: no role in the policy policy.toml; list certificate \"mallory\" under \
             [observer], [operator] or [admin] there"
        );
        // A uid is not a certificate name, even when the digits match.
        assert!(authz.role(&cert("1000")).is_err());
    }

    #[test]
    fn without_a_policy_only_root_may_call() {
        let authz = Authorizer::new(None);
        assert_eq!(authz.authorize(&unix(0), Rpc::Apply), Ok(Role::Admin));
        let e = authz.authorize(&unix(1000), Rpc::List).expect_err("denied");
        assert!(e.to_string().starts_with("uid 1000: "), "{e}");
        assert!(e.reason.contains("only root"), "{e}");
        let e = authz
            .authorize(&cert("carol"), Rpc::List)
            .expect_err("denied");
        assert!(e.reason.contains("--policy FILE"), "{e}");
    }

    #[test]
    fn observers_only_read() {
        let authz = policy();
        for rpc in [
            Rpc::Get,
            Rpc::List,
            Rpc::Watch,
            Rpc::Info,
            Rpc::MetricsSnapshot,
            Rpc::MetricsStream,
        ] {
            assert_eq!(authz.authorize(&cert("bob"), rpc), Ok(Role::Observer));
        }
        for rpc in [Rpc::Apply, Rpc::Revert, Rpc::RevertAll, Rpc::RenewLease] {
            let e = authz.authorize(&cert("bob"), rpc).expect_err("denied");
            assert_eq!(e.role, Some(Role::Observer));
            assert!(e.to_string().starts_with("bob (observer): Faults/"), "{e}");
        }
        assert_eq!(
            authz.authorize(&unix(1000), Rpc::RevertAll),
            Ok(Role::Operator)
        );
    }

    #[test]
    fn operators_are_held_to_their_limits() {
        let authz = policy();
        let alice = cert("alice");
        let check = |r: &ApplyRequest| authz.check_apply(&alice, Role::Operator, r);
        check(&request(block(Some(30.0)), 30)).expect("within the limits");

        assert_eq!(
            denial(check(&request(block(Some(30.0)), 300))),
            "alice (operator): duration 5m is longer than the operator maximum of 1m"
        );
        assert_eq!(
            denial(check(&request(block(None), 30))),
            "alice (operator): block percent 100% is more than the operator maximum of 50%"
        );
        let loss = FaultSpec::Loss(LossSpec {
            device: "eth0".to_owned(),
            direction: Direction::Egress,
            percent: 60.0,
            matcher: PacketMatch::default(),
        });
        assert_eq!(
            denial(check(&request(loss, 30))),
            "alice (operator): loss percent 60% is more than the operator maximum of 50%"
        );
        let memory = FaultSpec::MemoryStress(MemoryStressSpec {
            size: MemSize::Bytes(2 << 30),
            rate: None,
            lock: false,
            target: None,
        });
        assert_eq!(
            denial(check(&request(memory, 30))),
            "alice (operator): memory 2.0GiB is more than the operator maximum of 1.0GiB"
        );
        let fill = FaultSpec::DiskFill(crate::faults::disk::DiskFillSpec {
            path: "/data".into(),
            amount: crate::faults::disk::fill::FillAmount::Bytes(10 << 30),
            floor: None,
        });
        assert_eq!(
            denial(check(&request(fill, 30))),
            "alice (operator): disk space 10.0GiB is more than the operator maximum of 5.0GiB"
        );
        let mut forced = request(block(Some(10.0)), 30);
        forced.force = true;
        assert!(denial(check(&forced)).contains("only an admin may force"));
        // The admin is bound only by the agent's own limits.
        authz
            .check_apply(&cert("carol"), Role::Admin, &forced)
            .expect("admin");
    }

    #[test]
    fn a_kind_outside_the_list_names_the_allowed_ones() {
        let authz = Authorizer::new(Some(
            Policy::parse(
                Path::new("p.toml"),
                "[operator]\ncertificates = [\"alice\"]\nkinds = [\"loss\", \"block\"]\n",
            )
            .expect("parses"),
        ));
        let cpu = FaultSpec::CpuStress(CpuStressSpec {
            load: 10.0,
            cpus: vec![],
            cores: None,
            ramp: None,
            target: None,
        });
        assert_eq!(
            denial(authz.check_apply(&cert("alice"), Role::Operator, &request(cpu, 30))),
            "alice (operator): fault kind cpu is not allowed (allowed: block, loss)"
        );
    }

    #[test]
    fn policy_errors_name_the_line_and_the_field() {
        let parse = |text: &str| {
            Policy::parse(Path::new("p.toml"), text)
                .expect_err("refused")
                .to_string()
        };
        let e = parse("[observer]\ncertificates = [\"bob\"]\nuid = [1]\n");
        assert!(
            e.contains("line 3") && e.contains("unknown field `uid`"),
            "{e}"
        );
        let e = parse("[operator]\ncertificates = [\"a\"]\nkinds = [\"blocks\"]\n");
        assert!(
            e.contains("line 3") && e.contains("unknown variant `blocks`"),
            "{e}"
        );
        assert!(e.contains("`block`"), "lists what is accepted: {e}");
        let e = parse("[operator]\nkinds = []\nmax_duration = \"soon\"\n");
        assert!(
            e.contains("line 3") && e.contains("is not a duration"),
            "{e}"
        );
        let e = parse("[operator]\nkinds = []\nmax_percent = 150\n");
        assert!(e.contains("0 < max_percent <= 100"), "{e}");
        let e = parse("[operator]\ncertificates = [\"a\"]\n");
        assert!(e.contains("missing field `kinds`"), "{e}");
        let e = parse("[admins]\n");
        assert!(e.contains("unknown field `admins`"), "{e}");
        let e = parse("[admin]\ncertificates = [\"a\"]\n[observer]\ncertificates = [\"a\"]\n");
        assert!(
            e.contains("listed under both [admin] and [observer]"),
            "{e}"
        );
        let e = parse("[observer]\nuids = [0]\n");
        assert!(e.contains("uid 0 is always admin"), "{e}");
    }
}
