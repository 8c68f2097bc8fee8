//! `faultline doctor`: a preflight of the host, applying nothing. It gathers what the kernel
//! offers (the adapters' capabilities), what the agent process may do, the clock, the journal's
//! free space and the guard's ports ([`crate::kernel::preflight`]), and one line per fault
//! family saying whether it works here and, if not, why and what to use instead.

use crate::{
    config::AgentConfig,
    faults::{
        readiness::{Preflight, Readiness},
        Adapters, FaultSpec,
    },
    kernel::{
        caps::Capability,
        preflight::{self, Check, Privileges, Verdict},
    },
};

/// What the doctor found.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) kernel_release: String,
    /// Host-wide checks, the kernel's features first.
    pub(crate) checks: Vec<Check>,
    /// Every family, in the order of `families!`.
    pub(crate) families: Vec<(&'static str, Readiness)>,
}

/// Examines the host as the agent configured by `config` sees it through `adapters`, with
/// the privileges of this process.
pub(crate) fn examine(config: &AgentConfig, adapters: &Adapters) -> Report {
    let caps = adapters.caps();
    let privileges = Privileges::of_this_process();
    let mut checks: Vec<Check> = caps
        .list()
        .into_iter()
        .map(|(name, capability)| feature(name, capability))
        .collect();
    checks.push(preflight::lockdown());
    checks.push(preflight::cgroup_placement(&caps.cgroups));
    checks.push(privileges.check());
    checks.push(preflight::clock());
    checks.push(preflight::journal_space(&config.state_dir));
    checks.push(preflight::protected_ports(&config.protected_ports));
    let families = FaultSpec::readiness(&Preflight {
        caps,
        privileges: &privileges,
        host: adapters.host(false),
    });
    Report {
        kernel_release: caps.kernel_release.clone(),
        checks,
        families,
    }
}

/// A kernel feature as a check: a missing one is a warning here, since which families it
/// stops is said per family.
fn feature(name: &str, capability: &Capability) -> Check {
    Check {
        area: "kernel",
        verdict: if capability.available {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        detail: format!("{name}: {}", capability.detail),
        instead: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::caps::Capabilities;

    #[test]
    fn every_family_answers_and_the_kernel_features_are_listed() {
        let config = AgentConfig {
            state_dir: "/nonexistent".into(),
            bpf_pin_dir: "/nonexistent".into(),
            ..Default::default()
        };
        let adapters = Adapters::new(&config, Capabilities::probe());
        let report = examine(&config, &adapters);
        let kinds: Vec<&str> = report.families.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, FaultSpec::KINDS);
        let caps = adapters.caps();
        for (name, capability) in caps.list() {
            assert!(
                report
                    .checks
                    .iter()
                    .any(|c| c.detail == format!("{name}: {}", capability.detail)),
                "{name} is missing from {:?}",
                report.checks
            );
        }
    }
}
