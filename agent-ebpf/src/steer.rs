//! The steering classifier: picks the packets a shaping fault (netem delay, rate) applies to and
//! hands them to the fault's qdisc, leaving every other packet of the interface alone.
//!
//! Two modes, chosen by its `STEER` map:
//! - classify (egress): attached to faultline's htb root qdisc, it names the fault's class for a
//!   matching packet; the others fall to the default class, which does nothing to them.
//! - match (ingress): attached to the interface's clsact ingress hook as a classic filter whose
//!   action redirects to the fault's IFB device (mirred), whose root qdisc delays the packet
//!   before it re-enters the stack. Not `bpf_redirect`: on older kernels (Debian 12's 6.1,
//!   measured) an IFB drops what a BPF program redirects to it, as the packet lacks the
//!   "redirected" mark that mirred gives it.
//!
//! Past the deadline it steers nothing, so the fault's qdisc goes idle on time even when the
//! agent is dead.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use faultline_common::{SteerConfig, SteerStats, STEER_MATCH};

use crate::filter::{matches, NEXT};

#[map]
static STEER: Array<SteerConfig> = Array::with_max_entries(1, 0);

#[map]
static STEER_STATS: PerCpuArray<SteerStats> = PerCpuArray::with_max_entries(1, 0);

/// A classic (not direct-action) cls_bpf filter's answers: run the filter's actions, or not
/// this filter's packet.
const MATCHED: i32 = -1;
const NOT_MATCHED: i32 = 0;

#[classifier]
pub fn faultline_steer(ctx: TcContext) -> i32 {
    let Some(config) = STEER.get(0) else {
        // Cannot happen (a one-entry array); 0 leaves the packet unshaped in either mode: not
        // matched for a classic filter, htb's direct queue for a direct-action one.
        return 0;
    };
    let miss = if config.mode == STEER_MATCH {
        NOT_MATCHED
    } else {
        NEXT
    };
    if !steers(&ctx, config) {
        return miss;
    }
    if let Some(stats) = STEER_STATS.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs.
        unsafe { (*stats).steered += 1 };
    }
    if config.mode == STEER_MATCH {
        return MATCHED;
    }
    // SAFETY: tc_classid is writable for classifiers. In direct-action mode the kernel takes the
    // class from it when the program returns TC_ACT_OK, keeping only its low 16 bits (the minor):
    // the major comes from the filter's own class id, which the agent sets when it attaches.
    unsafe { (*ctx.skb.skb).tc_classid = config.classid };
    TC_ACT_OK
}

/// Whether the fault is live and the packet one it targets.
#[inline(always)]
fn steers(ctx: &TcContext, config: &SteerConfig) -> bool {
    // The packet's own headers first, the helper calls after: traffic the fault does not target
    // should cost as little as possible.
    if !matches(ctx, &config.filter).unwrap_or(false) {
        return false;
    }
    // SAFETY: the helper only reads the socket the packet belongs to, if any (none: 0). The
    // ancestor at the target's own depth is the target for its sockets and for every cgroup
    // below it.
    if config.cgroup_id != 0
        && unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, config.cgroup_level as i32) }
            != config.cgroup_id
    {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    now < config.deadline_ns
}
