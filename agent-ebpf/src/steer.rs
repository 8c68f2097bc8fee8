//! The steering classifier: picks the packets a shaping fault (netem delay, rate) applies to and
//! hands them to the fault's qdisc, leaving every other packet of the interface alone.
//!
//! Two modes, chosen by its `STEER` map:
//! - classify (egress): attached to faultline's htb root qdisc, it names the fault's class for a
//!   matching packet; the others fall to the default class, which does nothing to them.
//! - redirect (ingress): attached to the interface's clsact ingress hook, it redirects a matching
//!   packet to the fault's IFB device, whose root qdisc delays it before it re-enters the stack.
//!
//! Past the deadline it steers nothing, so the fault's qdisc goes idle on time even when the
//! agent is dead.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_cgroup_id},
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use faultline_common::{SteerConfig, SteerStats};

use crate::filter::{matches, NEXT};

#[map]
static STEER: Array<SteerConfig> = Array::with_max_entries(1, 0);

#[map]
static STEER_STATS: PerCpuArray<SteerStats> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn faultline_steer(ctx: TcContext) -> i32 {
    let Some(config) = STEER.get(0) else {
        return NEXT;
    };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= config.deadline_ns {
        return NEXT;
    }
    // SAFETY: the helper only reads the socket the packet belongs to, if any.
    if config.cgroup_id != 0 && unsafe { bpf_skb_cgroup_id(ctx.skb.skb) } != config.cgroup_id {
        return NEXT;
    }
    if !matches(&ctx, &config.filter).unwrap_or(false) {
        return NEXT;
    }
    if let Some(stats) = STEER_STATS.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs.
        unsafe { (*stats).steered += 1 };
    }
    if config.ifindex != 0 {
        // SAFETY: a helper taking plain integers; it returns TC_ACT_REDIRECT.
        return unsafe { bpf_redirect(config.ifindex, 0) } as i32;
    }
    // SAFETY: tc_classid is writable for classifiers. In direct-action mode the kernel takes the
    // class from it when the program returns TC_ACT_OK, keeping only its low 16 bits (the minor):
    // the major comes from the filter's own class id, which the agent sets when it attaches.
    unsafe { (*ctx.skb.skb).tc_classid = config.classid };
    TC_ACT_OK
}
