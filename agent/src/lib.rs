//! faultline: a privileged agent that injects faults into the host it runs on and reverts them,
//! always. The binary (`src/main.rs`) is a thin shell over this library: `faultline serve` runs
//! the agent, every other subcommand is a gRPC client of it.

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod errors;
pub mod faults;
pub mod fleet;
pub mod kernel;
pub mod monitor;
