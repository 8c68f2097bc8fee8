//! The `faultline.v1.Faults` service: requests in, engine calls, faults, lease renewals and
//! events out. Every call passes the [`Gate`] first; Apply, Revert and RevertAll leave one
//! audit line each, whatever their outcome.

use std::sync::Arc;

use faultline_proto::v1::{self as pb, faults_server::Faults};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    audit::{Record, Target, Who},
    authz::{Caller, Role, Rpc},
    convert,
    gate::Gate,
    status::from_engine,
};
use crate::{
    engine::{ApplyOutcome, ApplyRequest, Engine, RevertReason},
    errors::{EngineError, InvalidSpec},
};

pub(crate) struct FaultsService {
    engine: Arc<Engine>,
    gate: Arc<Gate>,
}

impl FaultsService {
    pub(crate) fn new(engine: Arc<Engine>, gate: Arc<Gate>) -> Self {
        Self { engine, gate }
    }

    /// Apply once the caller is known; `role` and `target` fill in for the audit line as far
    /// as the call gets.
    async fn apply_as(
        &self,
        caller: &Caller,
        parsed: Result<ApplyRequest, InvalidSpec>,
        role: &mut Option<Role>,
        target: &mut Target,
    ) -> Result<pb::ApplyResponse, Status> {
        let granted = self.gate.authorize(caller, Rpc::Apply).map_err(|denied| {
            *role = denied.role;
            Status::from(denied)
        })?;
        *role = Some(granted);
        let request = parsed.map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.gate.check_apply(caller, granted, &request)?;
        match self.engine.apply(request).await {
            Ok(ApplyOutcome::DryRun { plan }) => Ok(pb::ApplyResponse { fault: None, plan }),
            Ok(ApplyOutcome::Applied(fault)) => {
                target.id = Some(fault.id.clone());
                Ok(pb::ApplyResponse {
                    plan: fault.plan.clone(),
                    fault: Some(convert::proto_fault(&fault)),
                })
            }
            Err(e) => {
                match &e {
                    EngineError::Apply { id, .. } => target.id = Some(id.clone()),
                    EngineError::StateSpace { .. } => {
                        self.gate.refusals().counters().apply_refused_low_space()
                    }
                    _ => {}
                }
                Err(from_engine(e))
            }
        }
    }
}

/// What an Apply asked for, for its audit line (no id yet).
fn apply_target(request: &ApplyRequest) -> Target {
    Target {
        id: None,
        kind: Some(request.spec.kind()),
        summary: Some(request.spec.family().summary()),
        duration_secs: Some(request.duration.as_secs_f64()),
        dry_run: request.dry_run,
    }
}

#[tonic::async_trait]
impl Faults for FaultsService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self.gate.identify(&request, Rpc::Apply)?;
        // Parsed before the decision, which depends on the fault; parsing touches nothing.
        let parsed = convert::apply_request(request.into_inner());
        let mut target = parsed.as_ref().map(apply_target).unwrap_or_default();
        let mut role = None;
        let result = self.apply_as(&caller, parsed, &mut role, &mut target).await;
        self.gate.record(
            &Record::new(Who::new(&caller, role), Rpc::Apply)
                .with_fault(target)
                .with_result(&result),
        );
        if !matches!(&result, Ok(pb::ApplyResponse { fault: None, .. })) {
            // A task of its own, which runs while the answer goes out: whatever the apply used
            // up is prepared again for the next one.
            let engine = Arc::clone(&self.engine);
            tokio::spawn(async move { engine.prepare_ahead() });
        }
        result.map(Response::new)
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Fault>, Status> {
        let id = &request.get_ref().id;
        self.gate.admit(&request, Rpc::Get, Some(Target::id(id)))?;
        // An active fault's effect and objects as of now, not of the last periodic reading.
        self.engine.observe(id);
        let fault = self.engine.get(id).map_err(from_engine)?;
        Ok(Response::new(convert::proto_fault(&fault)))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.gate.admit(&request, Rpc::List, None)?;
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
        let id = request.get_ref().id.clone();
        let admitted = self
            .gate
            .admit(&request, Rpc::Revert, Some(Target::id(&id)))?;
        // Looked up first so that a failed revert is still audited with what the fault was.
        let known = self.engine.get(&id).ok();
        // Held until the audit line is written and the answer made (dropped on return).
        let (result, _answering) = self
            .engine
            .revert_answering(&id, RevertReason::Requested)
            .await;
        let result = result.map_err(from_engine);
        let target = match (&result, &known) {
            (Ok(fault), _) | (Err(_), Some(fault)) => Target::fault(fault),
            (Err(_), None) => Target::id(&id),
        };
        self.gate.record(
            &Record::new(admitted.who(), Rpc::Revert)
                .with_fault(target)
                .with_result(&result),
        );
        Ok(Response::new(convert::proto_fault(&result?)))
    }

    async fn revert_all(
        &self,
        request: Request<pb::RevertAllRequest>,
    ) -> Result<Response<pb::RevertAllResponse>, Status> {
        let admitted = self.gate.admit(&request, Rpc::RevertAll, None)?;
        let mut faults = Vec::new();
        let mut targets = Vec::new();
        let mut failures = Vec::new();
        for result in self.engine.revert_all(RevertReason::Requested).await {
            match result {
                Ok(fault) => {
                    targets.push(Target::fault(&fault));
                    faults.push(convert::proto_fault(&fault));
                }
                Err(e) => {
                    if let EngineError::Revert { id, .. } = &e {
                        targets.push(Target::id(id));
                    }
                    failures.push(e.to_string());
                }
            }
        }
        let result = if failures.is_empty() {
            Ok(pb::RevertAllResponse { faults })
        } else {
            Err(Status::internal(format!(
                "{} of {} faults could not be reverted: {}",
                failures.len(),
                failures.len() + faults.len(),
                failures.join("; ")
            )))
        };
        self.gate.record(
            &Record::new(admitted.who(), Rpc::RevertAll)
                .with_faults(targets)
                .with_result(&result),
        );
        result.map(Response::new)
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        // Renewals come every third of a lease: authorized like any change, not audited line
        // by line (the apply that created the lease was).
        self.gate.admit(&request, Rpc::RenewLease, None)?;
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
        let watched = Some(&request.get_ref().fault_id)
            .filter(|id| !id.is_empty())
            .map(|id| Target::id(id));
        let admitted = self.gate.admit(&request, Rpc::Watch, watched)?;
        let subscription = self.gate.subscribe(&admitted, Rpc::Watch)?;
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
        let ineffective_after = self.engine.config().ineffective_after;
        let event = move |fault: &crate::engine::Fault| pb::FaultEvent {
            fault: Some(convert::proto_fault(fault)),
            at: Some(std::time::SystemTime::now().into()),
            warning: if fault.ineffective {
                format!(
                    "acted on nothing in {}: is it aimed at the right target?",
                    humantime::format_duration(ineffective_after)
                )
            } else {
                String::new()
            },
        };
        tokio::spawn(async move {
            let _subscription = subscription;
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
                    // The client went away: its subscription ends now, not at the next event.
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
