//! What a fault has done so far, read from the kernel rather than estimated: the packets its
//! rules matched and dropped, the packets its classifier steered and its qdisc sent or
//! dropped, the CPU time and memory charged to its cgroup. Each family reads its own objects'
//! counters (`Family::effect`); the engine keeps the last reading of a fault that ended, and
//! flags a fault whose `hits` stayed at zero as ineffective.

use serde::{Deserialize, Serialize};

/// One counter of a fault's kernel objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counter {
    /// `packets_matched`, `packets_dropped`, `bytes_dropped`, `cpu_usec`, ...: snake case,
    /// ending in its unit, as Prometheus and JSON output name it.
    pub(crate) name: String,
    pub(crate) value: u64,
}

/// A fault's effect at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Effect {
    /// How often the fault acted: the packets it matched, the CPU time it burned. Zero after
    /// the grace period means the fault is aimed at nothing (or held to nothing by the
    /// kernel).
    pub(crate) hits: u64,
    /// What `hits` counts, for people: `packets matched`, `us of CPU`.
    pub(crate) hits_are: String,
    pub(crate) counters: Vec<Counter>,
}

impl Effect {
    pub(crate) fn new(hits_are: &str) -> Self {
        Self {
            hits: 0,
            hits_are: hits_are.to_owned(),
            counters: Vec::new(),
        }
    }

    /// Adds a counter; `hits` when it is the one that says whether the fault acted.
    pub(crate) fn counter(mut self, name: &str, value: u64) -> Self {
        self.counters.push(Counter {
            name: name.to_owned(),
            value,
        });
        self
    }

    pub(crate) fn hits(mut self, hits: u64) -> Self {
        self.hits = hits;
        self
    }
}
