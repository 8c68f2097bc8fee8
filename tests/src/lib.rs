//! The harness of faultline's integration tests: test hosts are network namespaces joined by a
//! veth pair ([`Lab`], from the lab crate the bench shares), the agent runs in one of them
//! ([`Agent`]), and effects are measured with real traffic ([`traffic`]). Everything a test
//! makes is removed by a guard's `Drop`, also when the test fails; names are unique per test so
//! tests run in parallel.
//!
//! The tests drive the `faultline` binary as users do; they never link the agent's code.

pub mod agent;
pub mod cgroup;
pub mod disk;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod python;

use std::io::Write as _;

pub use agent::Agent;
pub use faultline_lab::{traffic, unique, Host, Lab, Netns};

/// Whether this process may create network namespaces, nftables tables and eBPF programs.
/// When it may not, prints a visible skip line (past the test harness's output capture) and
/// returns false; the test then returns without asserting anything.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: needs root (network namespaces, nftables, eBPF)"
    );
    false
}

/// A visible `SKIP test: reason` line, past the harness's output capture, for a test that
/// returns early because the facility it needs is truly absent here.
pub fn skip(test: &str, reason: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// A line for the person running the tests (measured figures, timings), written past the
/// test harness's output capture so it shows for passing tests too.
pub fn note(test: &str, line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "[{test}] {line}");
}

/// How long what a revert leaves for after its answer may take to go. The answer means the
/// fault no longer acts; removing what does not end the effect (a clsact qdisc, an IFB, a
/// table, a cgroup) follows it, on the agent's own time.
pub const AFTER_REVERT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads `read` until it returns `want` or [`AFTER_REVERT`] has passed, and returns the last
/// reading: for comparing the kernel's state after a revert with the state before the fault.
pub fn settled<T: PartialEq>(
    want: &T,
    mut read: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let until = std::time::Instant::now() + AFTER_REVERT;
    loop {
        let now = read()?;
        if &now == want || std::time::Instant::now() >= until {
            return Ok(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
