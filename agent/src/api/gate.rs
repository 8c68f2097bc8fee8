//! The door every call goes through, shared by the services: it identifies the caller, asks
//! the [`Authorizer`](super::authz::Authorizer), and writes the audit line of every call it
//! refuses (within the caller's rate: see [`Refusals`]). The services write the lines of the
//! changes they make (Apply, Revert, RevertAll), since only they know the outcome.

use std::sync::Arc;

use tonic::{Request, Status};
use tracing::{debug, info, warn};

use super::{
    audit::{AuditLog, Outcome, Record, Target, Who},
    authz::{self, Authorizer, Caller, Denied, Role, Rpc},
    limits::{Subscription, Subscriptions},
    refusals::{Refusals, Source},
};
use crate::engine::ApplyRequest;

pub(crate) struct Gate {
    authz: Authorizer,
    audit: Arc<AuditLog>,
    refusals: Arc<Refusals>,
    subscriptions: Arc<Subscriptions>,
}

/// A call let through: who made it, in which role.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub(crate) caller: Caller,
    pub(crate) role: Role,
}

impl Admitted {
    pub(crate) fn who(&self) -> Who {
        Who::new(&self.caller, Some(self.role))
    }
}

impl Gate {
    pub(crate) fn new(
        authz: Authorizer,
        audit: Arc<AuditLog>,
        refusals: Arc<Refusals>,
        max_subscriptions: usize,
    ) -> Self {
        let subscriptions = Subscriptions::new(max_subscriptions, Arc::clone(refusals.counters()));
        Self {
            authz,
            audit,
            refusals,
            subscriptions,
        }
    }

    /// Opens a Watch or Metrics/Stream subscription for the caller, within its limit; the
    /// stream holds it until it ends.
    pub(crate) fn subscribe(&self, admitted: &Admitted, rpc: Rpc) -> Result<Subscription, Status> {
        self.subscriptions.subscribe(&admitted.caller, rpc.name())
    }

    pub(crate) fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    pub(crate) fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Who is calling; a caller without an identity is refused (and audited).
    pub(crate) fn identify<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        authz::caller(request).map_err(|denied| {
            let who = Who {
                identity: None,
                auth: "unidentified",
                uid: None,
                pid: None,
                peer: None,
                role: None,
            };
            self.refused(Record::new(who, rpc), denied)
        })
    }

    /// Identifies the caller and checks that its role allows the call; a refusal is audited
    /// with `target`, the fault the call named.
    pub(crate) fn admit<T>(
        &self,
        request: &Request<T>,
        rpc: Rpc,
        target: Option<Target>,
    ) -> Result<Admitted, Status> {
        let caller = self.identify(request, rpc)?;
        match self.authz.authorize(&caller, rpc) {
            Ok(role) => Ok(Admitted { caller, role }),
            Err(denied) => {
                let mut record = Record::new(Who::new(&caller, denied.role), rpc);
                record.fault = target;
                Err(self.refused(record, denied))
            }
        }
    }

    /// [`Authorizer::authorize`] without the audit line: for Apply, which writes one line for
    /// whatever happens to it.
    pub(crate) fn authorize(&self, caller: &Caller, rpc: Rpc) -> Result<Role, Denied> {
        self.authz.authorize(caller, rpc)
    }

    /// [`Authorizer::check_apply`], likewise without the audit line.
    pub(crate) fn check_apply(
        &self,
        caller: &Caller,
        role: Role,
        request: &ApplyRequest,
    ) -> Result<(), Denied> {
        self.authz.check_apply(caller, role, request)
    }

    pub(crate) fn record(&self, record: &Record) {
        self.write(record);
    }

    /// The audit line, and the same call in the agent's log with the fields operators filter
    /// on (`caller`, `id`, `kind`, `result`). A refusal beyond its source's rate only goes to
    /// the source's summary (and the debug log).
    fn write(&self, record: &Record) {
        let caller = record.who.identity.as_deref().unwrap_or("unidentified");
        let result = format!("{:?}", record.result).to_lowercase();
        let id = record.fault.as_ref().and_then(|f| f.id.as_deref());
        let kind = record.fault.as_ref().and_then(|f| f.kind);
        if record.result == Outcome::Denied
            && !self.refusals.call_refused(source(&record.who), record)
        {
            debug!(
                caller,
                rpc = record.rpc,
                id,
                kind,
                result,
                error = record.error,
                "call"
            );
            return;
        }
        match &record.error {
            None => info!(caller, rpc = record.rpc, id, kind, result, "call"),
            Some(error) => warn!(caller, rpc = record.rpc, id, kind, result, error, "call"),
        }
        self.audit.write(record);
    }

    fn refused(&self, mut record: Record, denied: Denied) -> Status {
        let status = Status::from(denied);
        record.result = Outcome::Denied;
        record.code = Some(format!("{:?}", status.code()));
        record.error = Some(status.message().to_owned());
        self.write(&record);
        status
    }
}

/// Whom a refused call is counted against: the TLS client's address, or the unix caller's uid.
fn source(who: &Who) -> Source {
    let peer = who
        .peer
        .as_deref()
        .and_then(|p| p.parse::<std::net::SocketAddr>().ok());
    match (peer, who.uid) {
        (Some(peer), _) => Source::ip(peer.ip()),
        (None, Some(uid)) => Source::Uid(uid),
        (None, None) => Source::Other,
    }
}
