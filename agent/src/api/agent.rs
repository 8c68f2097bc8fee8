//! The `faultline.v1.Agent` service: what this agent is and what its kernel offers.

use std::sync::Arc;

use faultline_proto::v1::{self as pb, agent_server::Agent};
use tonic::{Request, Response, Status};

use super::{authz::Rpc, gate::Gate};
use crate::engine::Engine;

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
}
