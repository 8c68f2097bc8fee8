//! The safety guard: the connections a fault must not cut unless the request says `force`.
//! Today that is every established TCP connection on a protected local port (SSH by default,
//! and the remote listener's port when it is on, so no fault cuts the sessions that control it).
//! It reads /proc/net/tcp{,6} of the agent's network namespace, only when the fault could touch
//! a protected port at all, and never changes anything.

use procfs::net::TcpState;

use crate::faults::{Connection, Family};

pub(crate) struct Guard {
    protected_ports: Vec<u16>,
}

impl Guard {
    pub(crate) fn new(protected_ports: Vec<u16>) -> Self {
        Self { protected_ports }
    }

    /// Established connections on these local ports, as the kernel lists them now. Listing them
    /// walks the kernel's whole TCP hash table (both files), whatever the number of sockets.
    fn connections_on(ports: &[u16]) -> Vec<Connection> {
        let v4 = procfs::net::tcp().unwrap_or_default();
        let v6 = procfs::net::tcp6().unwrap_or_default();
        v4.into_iter()
            .chain(v6)
            .filter(|e| e.state == TcpState::Established)
            .filter(|e| ports.contains(&e.local_address.port()))
            .map(|e| Connection {
                local: e.local_address,
                remote: e.remote_address,
            })
            .collect()
    }

    /// The first protected connection the fault would touch, described for the refusal.
    pub(crate) fn check(&self, fault: &dyn Family) -> Option<String> {
        let ports: Vec<u16> = self
            .protected_ports
            .iter()
            .copied()
            .filter(|&port| fault.may_touch_port(port))
            .collect();
        if ports.is_empty() {
            return None;
        }
        Self::connections_on(&ports)
            .into_iter()
            .find(|c| fault.touches(c))
            .map(|c| {
                format!(
                    "the established TCP connection {} -> {} on protected port {}",
                    c.remote,
                    c.local,
                    c.local.port()
                )
            })
    }
}
