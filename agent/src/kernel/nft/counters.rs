//! Reading a block fault back from the kernel: its counters (every rule of a fault carries a
//! `counter` just before its verdict, the packets it blocked, and a rule that blocks a share of
//! packets one more before its random draw, the packets it matched), and the objects it has in
//! faultline's table, for verifying that a revert left none.

use std::ffi::CStr;

use nftnl::{nftnl_sys as sys, ProtoFamily};

use super::{list_chains, live_set_name, socket::dump, NftError, CHAIN_PREFIX, TABLE};

/// Packets and bytes, as an nftables counter holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Count {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

impl std::ops::AddAssign for Count {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// What a block fault's rules have counted, summed over its rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BlockCounts {
    /// Packets the rules matched, before a `--percent` draw.
    pub(crate) matched: Count,
    /// Packets the rules dropped or rejected.
    pub(crate) blocked: Count,
}

/// One dumped rule of faultline's table: its chain and its counters in rule order.
struct DumpedRule {
    chain: String,
    counters: Vec<Count>,
}

/// The counters of fault `fault_id`'s rules; zero when it has no rules (any more).
pub(crate) fn counts(fault_id: &str) -> Result<BlockCounts, NftError> {
    let prefix = format!("{CHAIN_PREFIX}{fault_id}-");
    let mut total = BlockCounts::default();
    for rule in dump(libc::NFT_MSG_GETRULE as u16, "rules", parse_rule)?
        .into_iter()
        .flatten()
        .filter(|r| r.chain.starts_with(&prefix))
    {
        // A drawing rule counts twice (matched, then blocked); a plain one once, both.
        if let (Some(first), Some(last)) = (rule.counters.first(), rule.counters.last()) {
            total.matched += *first;
            total.blocked += *last;
        }
    }
    Ok(total)
}

/// Fault `fault_id`'s objects in faultline's table, one line each: its chains with their rule
/// counts, and its live set. Empty when it has none.
pub(crate) fn objects(fault_id: &str) -> Result<Vec<String>, NftError> {
    let prefix = format!("{CHAIN_PREFIX}{fault_id}-");
    let rules: Vec<DumpedRule> = dump(libc::NFT_MSG_GETRULE as u16, "rules", parse_rule)?
        .into_iter()
        .flatten()
        .collect();
    let mut lines: Vec<String> = list_chains()?
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .map(|chain| {
            let count = rules.iter().filter(|r| r.chain == chain).count();
            format!("nftables chain inet {TABLE} {chain}: {count} rule(s)")
        })
        .collect();
    let live = live_set_name(fault_id);
    if dump(libc::NFT_MSG_GETSET as u16, "sets", parse_set)?
        .into_iter()
        .flatten()
        .any(|name| name == live)
    {
        lines.push(format!("nftables set inet {TABLE} {live}"));
    }
    lines.sort();
    Ok(lines)
}

/// The name of a set of faultline's table.
fn parse_set(header: &libc::nlmsghdr) -> Option<String> {
    // SAFETY: the header is a complete NEWSET message from the dump, which
    // nftnl_set_nlmsg_parse reads into a set object we own and free.
    unsafe {
        let set = sys::nftnl_set_alloc();
        if set.is_null() {
            return None;
        }
        let mut found = None;
        if sys::nftnl_set_nlmsg_parse(header, set) >= 0 {
            let family = sys::nftnl_set_get_u32(set, sys::NFTNL_SET_FAMILY as u16);
            let table = sys::nftnl_set_get_str(set, sys::NFTNL_SET_TABLE as u16);
            let name = sys::nftnl_set_get_str(set, sys::NFTNL_SET_NAME as u16);
            if family == ProtoFamily::Inet as u32
                && !table.is_null()
                && !name.is_null()
                && CStr::from_ptr(table).to_bytes() == TABLE.as_bytes()
            {
                found = Some(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
        }
        sys::nftnl_set_free(set);
        found
    }
}

fn parse_rule(header: &libc::nlmsghdr) -> Option<DumpedRule> {
    // SAFETY: the header is a complete NEWRULE message from the dump, which
    // nftnl_rule_nlmsg_parse reads into a rule object we own and free; its expressions are
    // read through an iterator over that rule, destroyed before the rule is freed.
    unsafe {
        let rule = sys::nftnl_rule_alloc();
        if rule.is_null() {
            return None;
        }
        let mut found = None;
        if sys::nftnl_rule_nlmsg_parse(header, rule) >= 0 {
            let family = sys::nftnl_rule_get_u32(rule, sys::NFTNL_RULE_FAMILY as u16);
            let table = sys::nftnl_rule_get_str(rule, sys::NFTNL_RULE_TABLE as u16);
            let chain = sys::nftnl_rule_get_str(rule, sys::NFTNL_RULE_CHAIN as u16);
            if family == ProtoFamily::Inet as u32
                && !table.is_null()
                && !chain.is_null()
                && CStr::from_ptr(table).to_bytes() == TABLE.as_bytes()
            {
                let mut counters = Vec::new();
                let iter = sys::nftnl_expr_iter_create(rule);
                if !iter.is_null() {
                    loop {
                        let expr = sys::nftnl_expr_iter_next(iter);
                        if expr.is_null() {
                            break;
                        }
                        let name = sys::nftnl_expr_get_str(expr, sys::NFTNL_EXPR_NAME as u16);
                        if !name.is_null() && CStr::from_ptr(name).to_bytes() == b"counter" {
                            counters.push(Count {
                                packets: sys::nftnl_expr_get_u64(
                                    expr,
                                    sys::NFTNL_EXPR_CTR_PACKETS as u16,
                                ),
                                bytes: sys::nftnl_expr_get_u64(
                                    expr,
                                    sys::NFTNL_EXPR_CTR_BYTES as u16,
                                ),
                            });
                        }
                    }
                    sys::nftnl_expr_iter_destroy(iter);
                }
                found = Some(DumpedRule {
                    chain: CStr::from_ptr(chain).to_string_lossy().into_owned(),
                    counters,
                });
            }
        }
        sys::nftnl_rule_free(rule);
        found
    }
}
