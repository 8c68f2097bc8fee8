//! The `faultline.v1.Faults` service: requests in, engine calls, faults, lease renewals and
//! events out.

use std::sync::Arc;

use faultline_proto::v1::{self as pb, faults_server::Faults};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert, status::from_engine};
use crate::engine::{ApplyOutcome, Engine, RevertReason};

pub struct FaultsService {
    engine: Arc<Engine>,
}

impl FaultsService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl Faults for FaultsService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let request = convert::apply_request(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let response = match self.engine.apply(request).await.map_err(from_engine)? {
            ApplyOutcome::DryRun { plan } => pb::ApplyResponse { fault: None, plan },
            ApplyOutcome::Applied(fault) => pb::ApplyResponse {
                plan: fault.plan.clone(),
                fault: Some(convert::proto_fault(&fault)),
            },
        };
        Ok(Response::new(response))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Fault>, Status> {
        let fault = self
            .engine
            .get(&request.into_inner().id)
            .map_err(from_engine)?;
        Ok(Response::new(convert::proto_fault(&fault)))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let faults = self
            .engine
            .list()
            .iter()
            .map(convert::proto_fault)
            .collect();
        Ok(Response::new(pb::ListResponse { faults }))
    }

    async fn revert(
        &self,
        request: Request<pb::RevertRequest>,
    ) -> Result<Response<pb::Fault>, Status> {
        let fault = self
            .engine
            .revert(&request.into_inner().id, RevertReason::Requested)
            .await
            .map_err(from_engine)?;
        Ok(Response::new(convert::proto_fault(&fault)))
    }

    async fn revert_all(
        &self,
        _: Request<pb::RevertAllRequest>,
    ) -> Result<Response<pb::RevertAllResponse>, Status> {
        let mut faults = Vec::new();
        let mut failures = Vec::new();
        for result in self.engine.revert_all(RevertReason::Requested).await {
            match result {
                Ok(fault) => faults.push(convert::proto_fault(&fault)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if !failures.is_empty() {
            return Err(Status::internal(format!(
                "{} of {} faults could not be reverted: {}",
                failures.len(),
                failures.len() + faults.len(),
                failures.join("; ")
            )));
        }
        Ok(Response::new(pb::RevertAllResponse { faults }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let request = request.into_inner();
        let period = request
            .lease
            .map(convert::lease)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let outcomes = self
            .engine
            .renew(&request.ids, period)
            .map_err(from_engine)?;
        Ok(Response::new(convert::proto_renewals(outcomes)))
    }

    type WatchStream = ReceiverStream<Result<pb::FaultEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let only = Some(request.into_inner().fault_id).filter(|id| !id.is_empty());
        if let Some(id) = &only {
            self.engine.get(id).map_err(from_engine)?;
        }
        // Subscribe before taking the snapshot, so no transition falls between the two.
        let mut events = self.engine.subscribe();
        let mut closing = self.engine.closing();
        let snapshot = self.engine.list();
        let (tx, rx) = mpsc::channel(64);
        let wanted = move |id: &str| only.as_deref().is_none_or(|o| o == id);
        let event = |fault: &crate::engine::Fault| pb::FaultEvent {
            fault: Some(convert::proto_fault(fault)),
            at: Some(std::time::SystemTime::now().into()),
        };
        tokio::spawn(async move {
            let closed = async move {
                // Only whether it happened matters; the borrowed value must not live on.
                let _ = closing.wait_for(|c| *c).await.map(|_| ());
            };
            tokio::pin!(closed);
            for fault in snapshot.iter().filter(|f| wanted(&f.id)) {
                if tx.send(Ok(event(fault))).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    received = events.recv() => match received {
                        Ok(fault) if wanted(&fault.id) => {
                            if tx.send(Ok(event(&fault))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::data_loss(format!("watch fell behind and missed {n} events; watch again")))).await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = &mut closed => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
