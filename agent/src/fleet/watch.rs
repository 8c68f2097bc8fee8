//! What the guards read while faults run: every agent's metrics stream (`Metrics/Stream` at the
//! experiment's interval), followed by a task per agent that hands each snapshot to the
//! controller as it arrives. The agent samples on its own clock and sends at once, so a breach
//! reaches the controller one network hop after the agent saw it, not at the controller's next
//! round of requests to every agent; and one slow agent delays no other's readings.
//!
//! A stream that fails, ends or stays silent for an interval plus [`CONTACT_TIMEOUT`] is
//! reported as one failed contact and opened again an interval later, so that an agent that
//! stops answering counts as lost after the same number of failed contacts as before.

use std::time::Duration;

use faultline_proto::v1::{self as pb, metrics_client::MetricsClient};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::transport::Channel;

use crate::{api::metrics::from_proto, monitor::MetricsSnapshot};

/// How long an agent may take to open its stream, beyond the interval to send a snapshot.
pub(crate) const CONTACT_TIMEOUT: Duration = Duration::from_secs(5);

/// One agent's latest news.
pub(crate) enum Reading {
    /// A snapshot, and when it arrived.
    Snapshot(Box<MetricsSnapshot>, std::time::SystemTime),
    /// A failed contact: the stream could not be opened, failed, ended or fell silent.
    Failed(String),
}

/// The agents' metrics streams, followed until this is dropped (which ends the tasks and so
/// the streams).
pub(crate) struct Streams {
    readings: mpsc::Receiver<(usize, Reading)>,
    _tasks: JoinSet<()>,
}

impl Streams {
    /// Opens a stream to each of `agents` (their index in the list names them in the
    /// readings), each sending a snapshot every `interval`.
    pub(crate) fn open(agents: Vec<MetricsClient<Channel>>, interval: Duration) -> Self {
        // Room for a few readings of every agent: a controller busy reverting does not make the
        // agents' streams wait.
        let (tx, readings) = mpsc::channel(agents.len().max(1) * 4);
        let mut tasks = JoinSet::new();
        for (i, client) in agents.into_iter().enumerate() {
            tasks.spawn(follow(i, client, interval, tx.clone()));
        }
        Self {
            readings,
            _tasks: tasks,
        }
    }

    /// The next reading of any agent; `None` only when there are no agents.
    pub(crate) async fn next(&mut self) -> Option<(usize, Reading)> {
        self.readings.recv().await
    }
}

/// Follows agent `i`'s stream until the controller stops listening.
async fn follow(
    i: usize,
    mut client: MetricsClient<Channel>,
    interval: Duration,
    tx: mpsc::Sender<(usize, Reading)>,
) {
    let request = pb::StreamRequest {
        interval: prost_types::Duration::try_from(interval).ok(),
    };
    loop {
        let failure = match tokio::time::timeout(CONTACT_TIMEOUT, client.stream(request)).await {
            Err(_) => format!(
                "no metrics stream within {}",
                humantime::format_duration(CONTACT_TIMEOUT)
            ),
            Ok(Err(status)) => status.message().to_owned(),
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    let reading =
                        match tokio::time::timeout(interval + CONTACT_TIMEOUT, stream.message())
                            .await
                        {
                            Ok(Ok(Some(s))) => match from_proto(s) {
                                Ok(s) => {
                                    Reading::Snapshot(Box::new(s), std::time::SystemTime::now())
                                }
                                Err(e) => Reading::Failed(format!("an unreadable snapshot: {e}")),
                            },
                            Ok(Ok(None)) => {
                                break "the agent ended its metrics stream".to_owned();
                            }
                            Ok(Err(status)) => break status.message().to_owned(),
                            Err(_) => {
                                break format!(
                                    "no snapshot within {}",
                                    humantime::format_duration(interval + CONTACT_TIMEOUT)
                                )
                            }
                        };
                    if tx.send((i, reading)).await.is_err() {
                        return;
                    }
                }
            }
        };
        if tx.send((i, Reading::Failed(failure))).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}
