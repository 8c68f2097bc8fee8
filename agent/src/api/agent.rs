//! The `faultline.v1.Agent` service: what this agent is, what its kernel offers, and the
//! doctor's preflight of the host.

use std::sync::Arc;

use faultline_proto::v1::{self as pb, agent_server::Agent};
use tonic::{Request, Response, Status};

use super::{authz::Rpc, gate::Gate};
use crate::{
    engine::{doctor, Engine},
    faults::readiness::Readiness,
    kernel::preflight::Verdict,
};

pub(crate) struct AgentService {
    engine: Arc<Engine>,
    gate: Arc<Gate>,
}

impl AgentService {
    pub(crate) fn new(engine: Arc<Engine>, gate: Arc<Gate>) -> Self {
        Self { engine, gate }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.gate.admit(&request, Rpc::Info, None)?;
        let caps = self.engine.capabilities();
        let config = self.engine.config();
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel_release: caps.kernel_release.clone(),
            cgroup_version: caps.cgroup_version,
            capabilities: caps
                .list()
                .into_iter()
                .map(|(name, cap)| pb::Capability {
                    name: name.to_owned(),
                    available: cap.available,
                    detail: cap.detail.clone(),
                })
                .collect(),
            socket_path: config.socket.display().to_string(),
            state_dir: config.state_dir.display().to_string(),
            active_faults: u32::try_from(self.engine.active_count()).unwrap_or(u32::MAX),
        }))
    }

    async fn doctor(
        &self,
        request: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorResponse>, Status> {
        self.gate.admit(&request, Rpc::Doctor, None)?;
        let engine = Arc::clone(&self.engine);
        // The checks read procfs, sysfs and the cgroup tree: blocking reads, off the runtime.
        let report = tokio::task::spawn_blocking(move || engine.doctor())
            .await
            .map_err(|e| Status::internal(format!("the doctor's checks failed: {e}")))?;
        Ok(Response::new(doctor_response(
            &report,
            format!("agent pid {}", std::process::id()),
        )))
    }
}

/// The doctor's report as the API sends it; `examined_by` says which process looked.
pub(crate) fn doctor_response(report: &doctor::Report, examined_by: String) -> pb::DoctorResponse {
    pb::DoctorResponse {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel_release: report.kernel_release.clone(),
        checks: report
            .checks
            .iter()
            .map(|c| pb::Check {
                area: c.area.to_owned(),
                verdict: match c.verdict {
                    Verdict::Ok => pb::Verdict::Ok,
                    Verdict::Warn => pb::Verdict::Warn,
                    Verdict::Fail => pb::Verdict::Fail,
                } as i32,
                detail: c.detail.clone(),
                instead: c.instead.clone(),
            })
            .collect(),
        families: report
            .families
            .iter()
            .map(|(kind, readiness)| {
                let (works, detail, instead) = match readiness {
                    Readiness::Works(detail) => (true, detail.clone(), String::new()),
                    Readiness::DoesNot { because, instead } => {
                        (false, because.clone(), instead.clone())
                    }
                };
                pb::FamilyReadiness {
                    kind: (*kind).to_owned(),
                    works,
                    detail,
                    instead,
                }
            })
            .collect(),
        examined_by,
    }
}
