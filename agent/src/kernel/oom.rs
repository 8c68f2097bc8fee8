//! Who the OOM killer takes first: never the agent, which must live to revert its faults;
//! first the stress workers, whose memory is the fault. It owns the agent's own
//! `/proc/self/oom_score_adj` (`serve --oom-score-adj`, -900 by default, as the systemd unit's
//! `OOMScoreAdjust=` sets it before the agent starts) and the value workers give themselves.
//!
//! Lowering the score needs CAP_SYS_RESOURCE (root started by hand has it; the unit drops it,
//! which is why the unit sets `OOMScoreAdjust=` itself); raising it never does.

use std::{fs, io};

/// The agent's own score adjustment: far below anything else on the host, short of -1000,
/// which would make the agent unkillable even when it is the one leaking.
pub(crate) const AGENT_OOM_SCORE_ADJ: i32 = -900;
/// Stress workers: the first the OOM killer takes, before the host's own processes.
pub(crate) const WORKER_OOM_SCORE_ADJ: &std::ffi::CStr = c"1000";

const SELF: &str = "/proc/self/oom_score_adj";

/// What [`protect_self`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protection {
    /// Already at or below the target (set by systemd's `OOMScoreAdjust=`).
    Already(i32),
    /// Lowered from the value given to the target.
    Lowered(i32),
}

/// Sets the agent's score adjustment to `target` unless it is already at or below it.
pub(crate) fn protect_self(target: i32) -> io::Result<Protection> {
    let current: i32 = fs::read_to_string(SELF)?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    if current <= target {
        return Ok(Protection::Already(current));
    }
    fs::write(SELF, target.to_string())?;
    Ok(Protection::Lowered(current))
}
