//! nftables over netlink (libnftnl + libmnl through the `nftnl`/`mnl` crates; no `nft` binary).
//!
//! Everything faultline creates lives in one table, `inet faultline`. Each block fault owns one
//! base chain named `fl-<fault id>-in` or `fl-<fault id>-out`, so a fault's revert deletes
//! exactly its own rules, and the chain names alone tell a start-up sweep which fault left them.
//! Every change is one netlink batch: the kernel applies it whole or not at all.
//!
//! A block also expires inside the kernel: every rule of a fault first looks the packet's
//! family up in the fault's set `fl-<fault id>-live`, whose two elements (ipv4, ipv6) carry the
//! fault's remaining lifetime as a kernel-side timeout. When they expire the rules match
//! nothing, so a block ends on time even if the agent is dead; the next start removes the
//! inert chain.

use std::{
    collections::BTreeSet,
    ffi::{CStr, CString},
    fmt::Write as _,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    ptr::NonNull,
};

use ipnet::{Ipv4Net, Ipv6Net};
use nftnl::{
    expr::{
        Bitwise, Cmp, CmpOp, Counter, Expression, IcmpCode, InterfaceName, Ipv4HeaderField,
        Ipv6HeaderField, Meta, NetworkHeaderField, Payload, RejectionType, TcpHeaderField, ToSlice,
        TransportHeaderField,
    },
    nftnl_sys as sys, Batch, Chain, ChainType, MsgType, Policy, ProtoFamily, Rule, Table,
};
use thiserror::Error;

mod counters;
mod socket;

pub(crate) use counters::{counts, objects};
use socket::{dump, send};

/// The one table faultline owns.
pub(crate) const TABLE: &str = "faultline";
const CHAIN_PREFIX: &str = "fl-";
/// Ahead of the usual `filter` priority (0), so a host chain's `accept` cannot hide a fault
/// from the packets it targets (a drop in any base chain is final).
const PRIORITY: i32 = -10;

#[derive(Debug, Error)]
pub(crate) enum NftError {
    #[error("cannot open a netfilter netlink socket: {0} (faultline needs CAP_NET_ADMIN)")]
    Socket(#[source] io::Error),
    #[error("nf_tables refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read nf_tables {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid name {0:?} for an nftables object")]
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Input,
    Output,
}

impl Hook {
    fn suffix(self) -> &'static str {
        match self {
            Hook::Input => "in",
            Hook::Output => "out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4 {
    Any,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Drop,
    /// TCP reset for TCP, ICMP(v6) port unreachable for anything else.
    Reject,
}

/// One block fault, as the rules that carry it out. Ports are destination ports; addresses
/// are the remote side (source on input, destination on output). Empty lists match anything.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockRules {
    pub(crate) fault_id: String,
    pub(crate) hook: Hook,
    pub(crate) l4: L4,
    pub(crate) ports: Vec<RangeInclusive<u16>>,
    pub(crate) v4: Vec<Ipv4Net>,
    pub(crate) v6: Vec<Ipv6Net>,
    pub(crate) device: Option<String>,
    pub(crate) verdict: Verdict,
    /// Share of matching packets blocked, `0 < p <= 100`; `None` blocks all.
    pub(crate) percent: Option<f64>,
    /// How long the rules act; the kernel stops them after that on its own.
    pub(crate) lifetime: std::time::Duration,
}

impl BlockRules {
    fn chain_name(&self) -> String {
        format!("{CHAIN_PREFIX}{}-{}", self.fault_id, self.hook.suffix())
    }

    /// Whole milliseconds, at least one: what the kernel's set timeout takes.
    fn lifetime_ms(&self) -> u64 {
        (self.lifetime.as_millis().min(u64::MAX as u128) as u64).max(1)
    }

    /// nftables rules are conjunctions, so the request's lists (any of these ports, any of
    /// these networks) become one rule per combination; the limits on list lengths keep the
    /// product small.
    fn expand(&self) -> Vec<RuleSpec> {
        let nets: Vec<Net> = if self.v4.is_empty() && self.v6.is_empty() {
            vec![Net::Any]
        } else {
            self.v4
                .iter()
                .map(|n| Net::V4(*n))
                .chain(self.v6.iter().map(|n| Net::V6(*n)))
                .collect()
        };
        // Ports only exist for TCP and UDP; "any protocol" with ports means both of them.
        let protos: Vec<Proto> = match (self.l4, self.ports.is_empty()) {
            (L4::Tcp, _) => vec![Proto::Tcp],
            (L4::Udp, _) => vec![Proto::Udp],
            (L4::Any, false) => vec![Proto::Tcp, Proto::Udp],
            (L4::Any, true) if self.verdict == Verdict::Reject => vec![Proto::Tcp, Proto::NotTcp],
            (L4::Any, true) => vec![Proto::Any],
        };
        let ports: Vec<Option<RangeInclusive<u16>>> = if self.ports.is_empty() {
            vec![None]
        } else {
            self.ports.iter().cloned().map(Some).collect()
        };
        let mut rules = Vec::new();
        for net in &nets {
            for proto in &protos {
                for port in &ports {
                    rules.push(RuleSpec {
                        net: *net,
                        proto: *proto,
                        port: port.clone(),
                    });
                }
            }
        }
        rules
    }

    fn threshold(&self) -> Option<u32> {
        // Packets are blocked when a fresh random u32 is below the threshold. The kernel
        // compares registers with memcmp, i.e. as big-endian numbers; a uniformly random
        // register is uniform in that order too, so the big-endian threshold is exact.
        let percent = self.percent?;
        if percent >= 100.0 {
            return None;
        }
        Some(
            ((percent / 100.0) * 4_294_967_296.0)
                .round()
                .clamp(1.0, u32::MAX as f64) as u32,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Net {
    Any,
    V4(Ipv4Net),
    V6(Ipv6Net),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Any,
    Tcp,
    Udp,
    /// Everything but TCP: the second half of "reject any protocol", whose first half answers
    /// TCP with a reset.
    NotTcp,
}

#[derive(Debug, Clone, PartialEq)]
struct RuleSpec {
    net: Net,
    proto: Proto,
    port: Option<RangeInclusive<u16>>,
}

fn live_set_name(fault_id: &str) -> String {
    format!("{CHAIN_PREFIX}{fault_id}-live")
}

/// The key of a fault's live set: a packet's `meta nfproto` (one byte).
#[derive(Debug, Clone, Copy)]
struct NfProto(u8);

impl nftnl::set::SetKey for NfProto {
    /// nftables' `nf_proto` data type, so `nft list` shows the elements as `ipv4`/`ipv6`.
    const TYPE: u32 = 2;
    const LEN: u32 = 1;

    fn data(&self) -> Box<[u8]> {
        Box::new([self.0])
    }
}

/// nftnl's `Set` has no setter for timeouts; `NFT_SET_TIMEOUT` (0x10) lets elements expire.
fn set_timeout(set: &nftnl::set::Set<'_, NfProto>, timeout_ms: u64) {
    const NFT_SET_TIMEOUT: u32 = 0x10;
    let raw = set.as_ptr().as_ptr();
    // SAFETY: the set object is alive for the borrow; both attributes are plain integers.
    unsafe {
        sys::nftnl_set_set_u32(raw, sys::NFTNL_SET_FLAGS as u16, NFT_SET_TIMEOUT);
        sys::nftnl_set_set_u64(raw, sys::NFTNL_SET_TIMEOUT as u16, timeout_ms);
    }
}

/// `meta l4proto`, which the `nftnl` crate has no variant for.
struct MetaL4Proto;

impl Expression for MetaL4Proto {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: a fresh expression is configured with the attributes the "meta" type takes.
        unsafe {
            let expr = sys::nftnl_expr_alloc(c"meta".as_ptr());
            let expr = NonNull::new(expr).expect("libnftnl failed to allocate an expression");
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_DREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_KEY as u16,
                libc::NFT_META_L4PROTO as u32,
            );
            expr
        }
    }
}

fn cstring(s: &str) -> Result<CString, NftError> {
    CString::new(s).map_err(|_| NftError::Name(s.to_owned()))
}

fn table() -> Table {
    Table::new(c"faultline", ProtoFamily::Inet)
}

/// Held while faultline changes its table: `remove` decides from a listing whether it takes the
/// last chain (and so the whole table), and no `apply` may add a chain in between.
static CHANGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs a block fault's chain and rules in one batch.
pub(crate) fn apply(rules: &BlockRules) -> Result<(), NftError> {
    let _changing = CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let table = table();
    let chain_name = cstring(&rules.chain_name())?;
    let mut chain = Chain::new(&chain_name, &table);
    chain.set_hook(
        match rules.hook {
            Hook::Input => nftnl::Hook::In,
            Hook::Output => nftnl::Hook::Out,
        },
        PRIORITY,
    );
    chain.set_type(ChainType::Filter);
    chain.set_policy(Policy::Accept);

    let device = rules
        .device
        .as_deref()
        .map(|d| cstring(d).map(InterfaceName::Exact))
        .transpose()?;
    let comment = cstring(&format!("faultline fault {}", rules.fault_id))?;
    let threshold = rules.threshold();
    let set_name = cstring(&live_set_name(&rules.fault_id))?;
    let mut live = nftnl::set::Set::<NfProto>::new_named(&set_name, 1, &table, ProtoFamily::Inet);
    set_timeout(&live, rules.lifetime_ms());
    live.add(&NfProto(libc::NFPROTO_IPV4 as u8));
    live.add(&NfProto(libc::NFPROTO_IPV6 as u8));
    let built: Vec<Rule> = rules
        .expand()
        .iter()
        .map(|spec| {
            let mut rule = Rule::new(&chain);
            rule.add_expr(&Meta::NfProto);
            rule.add_expr(&nftnl::expr::Lookup::new(&live));
            add_match(&mut rule, rules.hook, spec);
            if let Some(device) = &device {
                rule.add_expr(&match rules.hook {
                    Hook::Input => Meta::IifName,
                    Hook::Output => Meta::OifName,
                });
                rule.add_expr(&Cmp::new(CmpOp::Eq, device));
            }
            if let Some(threshold) = threshold {
                // What the rule matched, before the draw: the blocked share is the last counter.
                rule.add_expr(&Counter);
                rule.add_expr(&Meta::PRandom);
                rule.add_expr(&Cmp::new(CmpOp::Lt, &threshold.to_be_bytes()[..]));
            }
            rule.add_expr(&Counter);
            rule.add_expr(&match (rules.verdict, spec.proto) {
                (Verdict::Drop, _) => nftnl::expr::Verdict::Drop,
                (Verdict::Reject, Proto::Tcp) => {
                    nftnl::expr::Verdict::Reject(RejectionType::TcpRst)
                }
                (Verdict::Reject, _) => {
                    nftnl::expr::Verdict::Reject(RejectionType::Icmp(IcmpCode::PortUnreach))
                }
            });
            // A comment only helps people reading `nft list ruleset`; it cannot fail for
            // a string this short.
            let _ = rule.set_comment(&comment);
            rule
        })
        .collect();

    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&live, MsgType::Add);
    batch.add_iter(live.elems_iter(), MsgType::Add);
    batch.add(&chain, MsgType::Add);
    for rule in &built {
        batch.add(rule, MsgType::Add);
    }
    send(batch.finalize(), || {
        format!("the rules of fault {}", rules.fault_id)
    })
}

fn add_match(rule: &mut Rule, hook: Hook, spec: &RuleSpec) {
    let remote_is_source = hook == Hook::Input;
    match spec.net {
        Net::Any => {}
        Net::V4(net) => add_network(
            rule,
            libc::NFPROTO_IPV4,
            NetworkHeaderField::Ipv4(if remote_is_source {
                Ipv4HeaderField::Saddr
            } else {
                Ipv4HeaderField::Daddr
            }),
            (net.netmask(), Ipv4Addr::UNSPECIFIED, net.network()),
        ),
        Net::V6(net) => add_network(
            rule,
            libc::NFPROTO_IPV6,
            NetworkHeaderField::Ipv6(if remote_is_source {
                Ipv6HeaderField::Saddr
            } else {
                Ipv6HeaderField::Daddr
            }),
            (net.netmask(), Ipv6Addr::UNSPECIFIED, net.network()),
        ),
    }
    match spec.proto {
        Proto::Any => {}
        Proto::Tcp => {
            rule.add_expr(&MetaL4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
        }
        Proto::Udp => {
            rule.add_expr(&MetaL4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_UDP as u8));
        }
        Proto::NotTcp => {
            rule.add_expr(&MetaL4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Neq, libc::IPPROTO_TCP as u8));
        }
    }
    if let Some(port) = &spec.port {
        // TCP and UDP keep the destination port at the same offset of their headers.
        rule.add_expr(&Payload::Transport(TransportHeaderField::Tcp(
            TcpHeaderField::Dport,
        )));
        if port.start() == port.end() {
            rule.add_expr(&Cmp::new(CmpOp::Eq, &port.start().to_be_bytes()[..]));
        } else {
            rule.add_expr(&Cmp::new(CmpOp::Gte, &port.start().to_be_bytes()[..]));
            rule.add_expr(&Cmp::new(CmpOp::Lte, &port.end().to_be_bytes()[..]));
        }
    }
}

/// `meta nfproto <family> <address field> & <mask> == <network>`; `(mask, zero, network)`.
fn add_network<A: ToSlice>(
    rule: &mut Rule,
    nfproto: i32,
    field: NetworkHeaderField,
    net: (A, A, A),
) {
    let (mask, zero, network) = net;
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, nfproto as u8));
    rule.add_expr(&Payload::Network(field));
    rule.add_expr(&Bitwise::new(mask, zero));
    rule.add_expr(&Cmp::new(CmpOp::Eq, network));
}

/// The plan, in `nft` syntax, of what `apply` would install.
pub(crate) fn describe(rules: &BlockRules) -> Vec<String> {
    let hook = match rules.hook {
        Hook::Input => "input",
        Hook::Output => "output",
    };
    let chain = rules.chain_name();
    let set = live_set_name(&rules.fault_id);
    let mut lines = vec![
        format!("nftables: add table inet {TABLE}"),
        format!(
            "nftables: add set inet {TABLE} {set} {{ type nf_proto; flags timeout; timeout {}ms; elements = {{ ipv4, ipv6 }}; }}",
            rules.lifetime_ms()
        ),
        format!(
            "nftables: add chain inet {TABLE} {chain} {{ type filter hook {hook} priority {PRIORITY}; policy accept; }}"
        ),
    ];
    for spec in rules.expand() {
        let mut line = format!("nftables: add rule inet {TABLE} {chain} meta nfproto @{set}");
        let side = if rules.hook == Hook::Input {
            "saddr"
        } else {
            "daddr"
        };
        match spec.net {
            Net::Any => {}
            Net::V4(net) => write!(line, " ip {side} {net}").unwrap(),
            Net::V6(net) => write!(line, " ip6 {side} {net}").unwrap(),
        }
        match spec.proto {
            Proto::Any => {}
            Proto::Tcp => line.push_str(" meta l4proto tcp"),
            Proto::Udp => line.push_str(" meta l4proto udp"),
            Proto::NotTcp => line.push_str(" meta l4proto != tcp"),
        }
        if let Some(port) = &spec.port {
            let proto = if spec.proto == Proto::Udp {
                "udp"
            } else {
                "tcp"
            };
            if port.start() == port.end() {
                write!(line, " {proto} dport {}", port.start()).unwrap();
            } else {
                write!(line, " {proto} dport {}-{}", port.start(), port.end()).unwrap();
            }
        }
        if let Some(device) = &rules.device {
            let key = if rules.hook == Hook::Input {
                "iifname"
            } else {
                "oifname"
            };
            write!(line, " {key} {device:?}").unwrap();
        }
        if let Some(threshold) = rules.threshold() {
            write!(
                line,
                " counter meta random < {threshold:#010x} ({}%)",
                rules.percent.unwrap_or(100.0)
            )
            .unwrap();
        }
        line.push_str(" counter");
        line.push_str(match (rules.verdict, spec.proto) {
            (Verdict::Drop, _) => " drop",
            (Verdict::Reject, Proto::Tcp) => " reject with tcp reset",
            (Verdict::Reject, _) => " reject with icmpx port-unreachable",
        });
        lines.push(line);
    }
    lines
}

/// Ends a block fault's effect in one batch, without a listing first: the rules of its chain
/// on `hook` are flushed, and an empty chain accepts every packet. The chain, its set and the
/// table stay for [`remove`]: deleting a base chain unregisters a hook, and the kernel frees it
/// after an RCU grace period. False when the fault has no such chain.
pub(crate) fn stop(fault_id: &str, hook: Hook) -> Result<bool, NftError> {
    let _changing = CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let table = table();
    let name = cstring(&format!("{CHAIN_PREFIX}{fault_id}-{}", hook.suffix()))?;
    let chain = Chain::new(&name, &table);
    let mut batch = Batch::new();
    // A rule delete without a handle flushes the chain.
    batch.add(&Rule::new(&chain), MsgType::Del);
    match send(batch.finalize(), || {
        format!("the flush of fault {fault_id}'s rules")
    }) {
        Ok(()) => Ok(true),
        Err(NftError::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes a fault's chains, rules and live set in one batch. Idempotent: a fault whose chains
/// are already gone is fine. The table goes too when no fault has a chain left in it.
pub(crate) fn remove(fault_id: &str) -> Result<(), NftError> {
    let _changing = CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let chains = list_chains()?;
    let prefix = format!("{CHAIN_PREFIX}{fault_id}-");
    let mine: Vec<&String> = chains.iter().filter(|c| c.starts_with(&prefix)).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let table = table();
    let names: Vec<CString> = mine.iter().map(|c| cstring(c)).collect::<Result<_, _>>()?;
    let chain_objects: Vec<Chain> = names.iter().map(|n| Chain::new(n, &table)).collect();
    let mut batch = Batch::new();
    if mine.len() == chains.len() {
        // The last fault: the table goes, and everything in it with it.
        batch.add(&table, MsgType::Del);
    } else {
        for chain in &chain_objects {
            // A rule delete without a handle flushes the chain; a base chain with rules cannot
            // be deleted.
            batch.add(&Rule::new(chain), MsgType::Del);
            batch.add(chain, MsgType::Del);
        }
        // The live set goes once no rule refers to it any more.
        let set_name = cstring(&live_set_name(fault_id))?;
        let live = nftnl::set::Set::<NfProto>::new_named(&set_name, 1, &table, ProtoFamily::Inet);
        batch.add(&live, MsgType::Del);
    }
    send(batch.finalize(), || {
        format!("the removal of fault {fault_id}'s chains")
    })
}

/// The ids of the faults that have chains in faultline's table.
pub(crate) fn fault_ids() -> Result<Vec<String>, NftError> {
    let ids: BTreeSet<String> = list_chains()?
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix(CHAIN_PREFIX)?;
            let (id, _) = rest.rsplit_once('-')?;
            Some(id.to_owned())
        })
        .collect();
    Ok(ids.into_iter().collect())
}

/// The firewall adapter: the chains and sets of block faults in the `inet faultline` table.
#[derive(Debug)]
pub(crate) struct Firewall {
    /// nf_tables is usable here; if not, there is nothing to sweep.
    pub(crate) available: bool,
}

impl super::Adapter for Firewall {
    fn sweep(&self, keep: &[&str]) -> super::Swept {
        let mut swept = super::Swept::default();
        if !self.available {
            return swept;
        }
        match fault_ids() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !keep.contains(&id.as_str())) {
                    match remove(&id) {
                        Ok(()) => swept.removed.push(format!("nftables chains of {id}")),
                        Err(e) => swept.failed.push(e.into()),
                    }
                }
            }
            Err(e) => swept.failed.push(e.into()),
        }
        swept
    }
}

/// Whether nf_tables answers: a harmless list of tables.
pub(crate) fn probe() -> Result<(), NftError> {
    dump(libc::NFT_MSG_GETTABLE as u16, "tables", |_| 1).map(|_| ())
}

/// Names of the chains in faultline's table; empty when the table does not exist.
fn list_chains() -> Result<Vec<String>, NftError> {
    dump(libc::NFT_MSG_GETCHAIN as u16, "chains", |header| {
        // SAFETY: the header is a complete NEWCHAIN message from the dump, which
        // nftnl_chain_nlmsg_parse reads into a chain object we own and free.
        unsafe {
            let chain = sys::nftnl_chain_alloc();
            if chain.is_null() {
                return None;
            }
            let mut found = None;
            if sys::nftnl_chain_nlmsg_parse(header, chain) >= 0 {
                let family = sys::nftnl_chain_get_u32(chain, sys::NFTNL_CHAIN_FAMILY as u16);
                let table = sys::nftnl_chain_get_str(chain, sys::NFTNL_CHAIN_TABLE as u16);
                let name = sys::nftnl_chain_get_str(chain, sys::NFTNL_CHAIN_NAME as u16);
                if family == ProtoFamily::Inet as u32
                    && !table.is_null()
                    && !name.is_null()
                    && CStr::from_ptr(table).to_bytes() == TABLE.as_bytes()
                {
                    found = Some(CStr::from_ptr(name).to_string_lossy().into_owned());
                }
            }
            sys::nftnl_chain_free(chain);
            found
        }
    })
    .map(|names| names.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BlockRules {
        BlockRules {
            fault_id: "0123456789ab".to_owned(),
            hook: Hook::Input,
            l4: L4::Any,
            ports: vec![],
            v4: vec![],
            v6: vec![],
            device: None,
            verdict: Verdict::Drop,
            percent: None,
            lifetime: std::time::Duration::from_secs(30),
        }
    }

    #[test]
    fn lists_expand_to_one_rule_per_combination() {
        let mut r = rules();
        r.ports = vec![80..=80, 8000..=8100];
        r.v4 = vec!["10.0.0.0/8".parse().unwrap()];
        r.v6 = vec!["fd00::/8".parse().unwrap()];
        // 2 networks x {tcp, udp} x 2 port ranges
        assert_eq!(r.expand().len(), 8);
        assert_eq!(describe(&r).len(), 3 + 8);
    }

    #[test]
    fn reject_of_any_protocol_resets_tcp_and_answers_the_rest_with_icmp() {
        let mut r = rules();
        r.verdict = Verdict::Reject;
        let plan = describe(&r);
        assert!(
            plan[3].ends_with("meta l4proto tcp counter reject with tcp reset"),
            "{plan:?}"
        );
        assert!(
            plan[4].ends_with("meta l4proto != tcp counter reject with icmpx port-unreachable"),
            "{plan:?}"
        );
    }

    #[test]
    fn percent_becomes_a_threshold_on_a_random_u32() {
        let mut r = rules();
        assert_eq!(r.threshold(), None);
        r.percent = Some(100.0);
        assert_eq!(r.threshold(), None);
        r.percent = Some(50.0);
        assert_eq!(r.threshold(), Some(0x8000_0000));
        r.percent = Some(0.000_000_001);
        assert_eq!(r.threshold(), Some(1));
    }

    #[test]
    fn chain_names_carry_the_fault_id() {
        assert_eq!(rules().chain_name(), "fl-0123456789ab-in");
    }
}
