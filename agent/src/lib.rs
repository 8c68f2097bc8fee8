//! faultline: a privileged agent that injects faults into the host it runs on and reverts them,
//! always. The binary (`src/main.rs`) is a thin shell over this library: `faultline serve` runs
//! the agent, every other subcommand is a gRPC client of it.

pub mod api;
pub mod cli;
pub(crate) mod config;
pub(crate) mod engine;
pub(crate) mod errors;
pub(crate) mod faults;
pub(crate) mod fleet;
pub(crate) mod kernel;
pub(crate) mod monitor;
pub(crate) mod units;
