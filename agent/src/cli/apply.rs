//! The one-shot flow every fault subcommand shares: apply through the agent, then either
//! return (`--detach`, `--dry-run`) or stay with the fault -- showing the time left, following
//! its lifecycle, renewing its lease if it has one, and reverting it on Ctrl-C -- until it has
//! ended.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, SystemTime},
};

use faultline_proto::v1::{self as pb, faults_client::FaultsClient};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{Instant, Interval, MissedTickBehavior},
};
use tonic::transport::Channel;

use super::{
    args::{ApplyArgs, Global, Output},
    connect::channel,
    output::{self, Failure},
    view::FaultView,
};

pub(crate) async fn client(global: &Global) -> Result<FaultsClient<Channel>, Failure> {
    Ok(FaultsClient::new(channel(global).await?))
}

pub(crate) async fn run(
    global: &Global,
    args: &ApplyArgs,
    kind: pb::fault_spec::Kind,
) -> Result<(), Failure> {
    let mut faults = client(global).await?;
    let response = faults.apply(args.request(kind)).await?.into_inner();
    if args.dry_run {
        output::print_plan(&response.plan, global.output);
        return Ok(());
    }
    let fault =
        output::fault(response.fault.ok_or_else(|| {
            Failure::internal("the agent applied the fault but did not return it")
        })?);
    if args.detach {
        match global.output {
            Output::Json => output::print_fault(&fault, Output::Json),
            Output::Text => println!("{}", fault.id()),
        }
        return Ok(());
    }
    let last = follow(&mut faults, fault).await?;
    if global.output == Output::Json {
        output::print_fault(&last, Output::Json);
    }
    match last.state() {
        "reverted" => Ok(()),
        state => Err(Failure::internal(format!(
            "fault {} ended {state}: {}",
            last.id(),
            last.reason()
        ))),
    }
}

/// Stays with an active fault until it ends; Ctrl-C (or SIGTERM) reverts it first. A leased
/// fault is renewed every third of its lease: this command is its controller, so the fault
/// ends within the lease of this command's death (SIGKILL, a lost machine), and two renewals
/// may fail before the lease runs out.
async fn follow(
    faults: &mut FaultsClient<Channel>,
    fault: FaultView,
) -> Result<FaultView, Failure> {
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "fault {} active: {} (Ctrl-C reverts it now)",
        fault.id(),
        fault.summary()
    );
    let mut renewals = fault.lease().map(|lease| {
        let every = lease / 3;
        let mut interval = tokio::time::interval_at(Instant::now() + every, every);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        (interval, every)
    });
    let mut events = faults
        .watch(pb::WatchRequest {
            fault_id: fault.id().to_owned(),
        })
        .await?
        .into_inner();
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::internal(format!("SIGINT handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::internal(format!("SIGTERM handler: {e}")))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut current = fault;
    loop {
        tokio::select! {
            event = events.message() => match event? {
                Some(pb::FaultEvent { fault: Some(f), .. }) => {
                    current = output::fault(f);
                    if current.is_finished() {
                        break;
                    }
                }
                Some(_) => {}
                None => {
                    // The agent closed the stream: it is shutting down, and reverts on its way out.
                    return Err(Failure::unreachable(&"the agent", "it went away while the fault was active; it reverts its faults when it shuts down"));
                }
            },
            every = next_renewal(&mut renewals) => {
                if let Some(problem) = renew(faults, current.id(), every).await {
                    // The agent reverts the fault if this goes on; the Watch stream says when.
                    if tty {
                        eprint!("\r\x1b[K");
                    }
                    eprintln!("faultline: the lease of fault {} was not renewed: {problem}", current.id());
                }
            }
            _ = int.recv() => { current = revert(faults, current.id()).await?; break; }
            _ = term.recv() => { current = revert(faults, current.id()).await?; break; }
            _ = tick.tick() => {
                if tty {
                    let left = current.remaining(SystemTime::now()).as_secs();
                    eprint!("\r\x1b[K{} {}: {} left", current.id(), current.state(), humantime::format_duration(Duration::from_secs(left)));
                    let _ = std::io::stderr().flush();
                }
            }
        }
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    eprintln!(
        "fault {} {} ({})",
        current.id(),
        current.state(),
        current.reason()
    );
    Ok(current)
}

/// The next renewal time of `renewals`, never without a lease; yields the renewal period.
async fn next_renewal(renewals: &mut Option<(Interval, Duration)>) -> Duration {
    match renewals {
        Some((interval, every)) => {
            interval.tick().await;
            *every
        }
        None => std::future::pending().await,
    }
}

/// Renews the lease of fault `id`, giving up after `within` (the next renewal is due then);
/// what went wrong, if anything worth saying.
async fn renew(faults: &mut FaultsClient<Channel>, id: &str, within: Duration) -> Option<String> {
    let request = pb::RenewLeaseRequest {
        ids: vec![id.to_owned()],
        lease: None,
    };
    match tokio::time::timeout(within, faults.renew_lease(request)).await {
        // A fault that has just ended is no problem: the Watch stream brings its end next.
        Ok(Ok(response)) => response
            .into_inner()
            .not_renewed
            .into_iter()
            .find(|n| n.reason != i32::from(pb::NotRenewedReason::Ended))
            .map(|n| n.detail),
        Ok(Err(status)) => Some(Failure::from(status).to_string()),
        Err(_) => Some(format!(
            "the agent did not answer within {}",
            humantime::format_duration(within)
        )),
    }
}

async fn revert(faults: &mut FaultsClient<Channel>, id: &str) -> Result<FaultView, Failure> {
    let reverted = faults
        .revert(pb::RevertRequest { id: id.to_owned() })
        .await?
        .into_inner();
    Ok(output::fault(reverted))
}
