//! The agent's configuration: where it listens and keeps state, and the limits it enforces.
//! Every field has a default that works on a stock host, so `faultline serve` needs no file.

use std::{path::PathBuf, time::Duration};

pub(crate) const DEFAULT_SOCKET: &str = "/run/faultline/faultline.sock";
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/faultline";
pub(crate) const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/faultline";
pub(crate) const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Long enough for the traffic a fault targets to show up, short enough that an experiment
/// aimed at nothing is flagged early in its run.
pub(crate) const DEFAULT_INEFFECTIVE_AFTER: Duration = Duration::from_secs(10);
/// SSH: a fault that cuts the operator's session loses the host.
pub(crate) const DEFAULT_PROTECTED_PORTS: &[u16] = &[22];

#[derive(Debug, Clone)]
pub(crate) struct AgentConfig {
    /// The local gRPC listener (unix socket, mode 0600).
    pub(crate) socket: PathBuf,
    /// A group that may also connect to the socket (mode 0660); the policy still decides
    /// what each uid may do.
    pub(crate) socket_group: Option<u32>,
    /// Holds the journal; must survive a crash (not tmpfs, for the journal to mean anything).
    pub(crate) state_dir: PathBuf,
    /// Where eBPF attachments are pinned so that they outlive the agent until their deadline.
    pub(crate) bpf_pin_dir: PathBuf,
    /// The longest duration a fault may ask for.
    pub(crate) max_duration: Duration,
    /// Local TCP ports whose established connections the safety guard protects (the remote
    /// listener's port among them when it is on).
    pub(crate) protected_ports: Vec<u16>,
    /// Bytes of available memory a memory stress must leave; `None`: 5 % of memory, at least
    /// 256 MiB.
    pub(crate) memory_reserve: Option<u64>,
    /// The cgroup under which stress faults get their cgroups, at each hierarchy's root.
    pub(crate) cgroup_parent: String,
    /// The cgroup delegated to the agent (systemd's `Delegate=`, cgroup v2), where the parent
    /// goes instead of the hierarchy's root; the agent itself has moved into its `agent` leaf.
    pub(crate) cgroup_home: Option<PathBuf>,
    /// A fault that has acted on nothing for this long after it was applied is flagged
    /// ineffective.
    pub(crate) ineffective_after: Duration,
    /// Bytes of the state filesystem kept free for journal entries and reverts: applies are
    /// refused and audit lines shed at this reserve (see `engine::space`).
    pub(crate) state_reserve: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            bpf_pin_dir: DEFAULT_BPF_PIN_DIR.into(),
            max_duration: DEFAULT_MAX_DURATION,
            protected_ports: DEFAULT_PROTECTED_PORTS.to_vec(),
            memory_reserve: None,
            cgroup_parent: crate::kernel::cgroup::DEFAULT_PARENT.to_owned(),
            cgroup_home: None,
            ineffective_after: DEFAULT_INEFFECTIVE_AFTER,
            state_reserve: crate::engine::space::DEFAULT_STATE_RESERVE,
        }
    }
}
