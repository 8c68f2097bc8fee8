//! Thin, typed adapters over the kernel interfaces faultline drives: nftables over netlink,
//! eBPF tc classifiers, the kernel's BTF, and the probe of what the running kernel offers.
//! Adapters do what they are told and nothing more; policy (guards, conflicts, deadlines) lives
//! in the engine.

pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod netdev;
pub mod nft;
pub mod qdisc;
pub mod qdisc_opts;
pub mod tc;
