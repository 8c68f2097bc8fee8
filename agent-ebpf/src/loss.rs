//! The loss classifier: drops a share of the packets its filter matches.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_STOLEN},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use faultline_common::{LossConfig, LossStats};

use crate::filter::{matches, NEXT};

#[map]
static CONFIG: Array<LossConfig> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<LossStats> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn faultline_loss(ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return NEXT;
    };
    // The filter before the clock: traffic the fault does not target passes either way, and
    // should not pay for a clock read.
    if !matches(&ctx, &config.filter).unwrap_or(false) {
        return NEXT;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= config.deadline_ns {
        return NEXT;
    }
    // SAFETY: a helper without arguments.
    let drop = (unsafe { bpf_get_prandom_u32() } as u64) < config.threshold;
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs.
        unsafe {
            (*stats).matched += 1;
            if drop {
                (*stats).dropped += 1;
            }
        }
    }
    match (drop, config.consume != 0) {
        (false, _) => NEXT,
        (true, false) => TC_ACT_SHOT,
        (true, true) => TC_ACT_STOLEN,
    }
}
