//! Fleet orchestration: `faultline fleet run experiment.yaml` drives many agents as a client of
//! their gRPC APIs — the reliability workflow of baseline, inject, watch the guards, abort on
//! breach, report. There is no scheduler here: agents run under whatever already runs services
//! (systemd, a Kubernetes DaemonSet), and this is one more client of them.

pub(crate) mod experiment;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod watch;
