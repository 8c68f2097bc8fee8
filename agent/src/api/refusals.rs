//! Refusals are recorded, not amplified. It owns what happens when a caller is refused (a TLS
//! client at the handshake, a call the policy refuses): per source, the first refusals get a
//! line of their own in the audit log and a WARN line in the log, as every refusal did before;
//! beyond a rate (`--refusal-log-rate`, per minute) they are only counted, and one summary line
//! per source per `--refusal-summary-interval` says how many more were refused and why. A source
//! beyond its rate is also put under a penalty, like OpenSSH's `PerSourcePenalties`: its new
//! connections are closed unanswered (no handshake, no line) for a while that doubles with each
//! penalty, up to `--refusal-penalty-max`, and starts again once the source has been quiet for a
//! minute. Other sources are not affected, and neither is the unix socket: its callers (keyed
//! by uid) are rate-limited in the logs but never penalized.
//!
//! A source is an IPv4 address, an IPv6 /64 (what one host usually holds), or a uid. The table
//! of sources is bounded; beyond it, new sources share one entry. Across all sources at most
//! ten times the per-source rate of lines of their own are written, so that many sources at
//! once cannot amplify either.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;
use tracing::{debug, warn};

use super::audit::{AuditLog, Outcome, Record, RefusalSummary, Who};
use crate::monitor::counters::{AgentCounters, RefusalStage};

/// Sources tracked one by one; beyond, new sources share the entry [`Source::Other`].
const MAX_SOURCES: usize = 4096;
/// Distinct reasons kept per source and interval; beyond, they are counted as "other reasons".
const MAX_REASONS: usize = 8;
/// The first penalty; each one after it doubles, up to the maximum.
const FIRST_PENALTY: Duration = Duration::from_secs(1);
/// A source quiet for this long starts again from the first penalty.
const FORGIVE_AFTER: Duration = Duration::from_secs(60);
/// Lines of their own across all sources, as a multiple of the per-source rate.
const GLOBAL_FACTOR: u32 = 10;

/// How refusals are recorded: `serve --refusal-log-rate`, `--refusal-summary-interval`,
/// `--refusal-penalty-max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefusalPolicy {
    /// Refusals per source per minute that get a line of their own.
    pub(crate) per_minute: u32,
    /// How often a source beyond its rate gets a summary line.
    pub(crate) summary_interval: Duration,
    /// The longest penalty; zero turns penalties off.
    pub(crate) penalty_max: Duration,
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            per_minute: 10,
            summary_interval: Duration::from_secs(60),
            penalty_max: Duration::from_secs(60),
        }
    }
}

/// Who a refusal is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    /// A TLS client's address (IPv6: its /64).
    Ip(IpAddr),
    /// A caller of the unix socket.
    Uid(u32),
    /// Sources beyond the table's bound, and callers without an identity.
    Other,
}

impl Source {
    pub(crate) fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Ip(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
            v4 => Source::Ip(v4),
        }
    }

    /// Only network sources are slowed down: the unix socket is root's way in.
    fn penalizable(self) -> bool {
        matches!(self, Source::Ip(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Source::Ip(v4) => write!(f, "{v4}"),
            Source::Uid(uid) => write!(f, "uid {uid}"),
            Source::Other => f.write_str("other sources"),
        }
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: a line of its own.
    Record,
    /// Beyond it: counted into the source's next summary line.
    Summarize,
}

/// A token bucket: `capacity` lines, refilled at `capacity` a minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            at: now,
        }
    }

    fn take(&mut self, capacity: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        self.tokens = (self.tokens + refill * f64::from(capacity)).min(f64::from(capacity));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct SourceState {
    bucket: Bucket,
    /// How the source's callers authenticate (for the summary's `who`).
    auth: &'static str,
    /// Refusals counted since the last summary, by reason.
    summarized: BTreeMap<String, u64>,
    /// Connections closed unanswered since the last summary.
    dropped: u64,
    /// Penalties since the source was last forgiven.
    strikes: u32,
    penalty_until: Option<Instant>,
    last_refusal: Instant,
}

/// One source's summary line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub(crate) source: Source,
    pub(crate) auth: &'static str,
    pub(crate) reasons: BTreeMap<String, u64>,
    pub(crate) dropped: u64,
    /// The penalty left when the summary was taken.
    pub(crate) penalized_for: Option<Duration>,
}

impl Summary {
    pub(crate) fn refused(&self) -> u64 {
        self.reasons.values().sum()
    }
}

/// The per-source bookkeeping, without I/O: what [`Refusals`] decides with.
#[derive(Debug)]
pub(crate) struct Limiter {
    policy: RefusalPolicy,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    sources: HashMap<Source, SourceState>,
    global: Bucket,
}

impl Limiter {
    pub(crate) fn new(policy: RefusalPolicy, now: Instant) -> Self {
        Self {
            policy,
            state: Mutex::new(LimiterState {
                sources: HashMap::new(),
                global: Bucket::full(policy.per_minute * GLOBAL_FACTOR, now),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one refusal of `source` for `reason`; the second value is true when the source
    /// was put under a (new or longer) penalty.
    pub(crate) fn refused(
        &self,
        source: Source,
        auth: &'static str,
        reason: &str,
        now: Instant,
    ) -> (Verdict, bool) {
        let policy = self.policy;
        let mut state = self.state();
        let LimiterState { sources, global } = &mut *state;
        let source = if sources.contains_key(&source) || sources.len() < MAX_SOURCES {
            source
        } else {
            Source::Other
        };
        let entry = sources.entry(source).or_insert_with(|| SourceState {
            bucket: Bucket::full(policy.per_minute, now),
            auth,
            summarized: BTreeMap::new(),
            dropped: 0,
            strikes: 0,
            penalty_until: None,
            last_refusal: now,
        });
        if now.saturating_duration_since(entry.last_refusal) >= FORGIVE_AFTER {
            entry.strikes = 0;
        }
        entry.last_refusal = now;
        if entry.bucket.take(policy.per_minute, now)
            && global.take(policy.per_minute * GLOBAL_FACTOR, now)
        {
            return (Verdict::Record, false);
        }
        let known = entry.summarized.len() < MAX_REASONS || entry.summarized.contains_key(reason);
        let key = if known { reason } else { "other reasons" };
        *entry.summarized.entry(key.to_owned()).or_default() += 1;
        let under_penalty = entry.penalty_until.is_some_and(|until| until > now);
        // Refusals of connections accepted before the penalty began do not lengthen it.
        let penalize = source.penalizable() && !policy.penalty_max.is_zero() && !under_penalty;
        if penalize {
            let length = FIRST_PENALTY
                .saturating_mul(1u32 << entry.strikes.min(16))
                .min(policy.penalty_max);
            entry.strikes += 1;
            entry.penalty_until = Some(now + length);
        }
        (Verdict::Summarize, penalize)
    }

    /// Whether a new connection from `ip` is to be closed unanswered (its source is under a
    /// penalty); counted into the source's summary when it is.
    pub(crate) fn penalized(&self, ip: IpAddr, now: Instant) -> bool {
        let mut state = self.state();
        match state.sources.get_mut(&Source::ip(ip)) {
            Some(entry) if entry.penalty_until.is_some_and(|until| until > now) => {
                entry.dropped += 1;
                true
            }
            _ => false,
        }
    }

    /// The summaries due (every source with refusals or drops counted since the last one), and
    /// the number of sources under a penalty now. Forgets sources that have been quiet long
    /// enough for their bucket to be full again.
    pub(crate) fn take_summaries(&self, now: Instant) -> (Vec<Summary>, usize) {
        let quiet = FORGIVE_AFTER
            .max(self.policy.summary_interval)
            .max(self.policy.penalty_max);
        let mut state = self.state();
        let mut summaries = Vec::new();
        for (source, entry) in &mut state.sources {
            if entry.summarized.is_empty() && entry.dropped == 0 {
                continue;
            }
            summaries.push(Summary {
                source: *source,
                auth: entry.auth,
                reasons: std::mem::take(&mut entry.summarized),
                dropped: std::mem::take(&mut entry.dropped),
                penalized_for: entry
                    .penalty_until
                    .map(|until| until.saturating_duration_since(now))
                    .filter(|left| !left.is_zero()),
            });
        }
        state.sources.retain(|_, entry| {
            !entry.summarized.is_empty()
                || entry.penalty_until.is_some_and(|until| until > now)
                || now.saturating_duration_since(entry.last_refusal) < quiet
        });
        let penalized = state
            .sources
            .values()
            .filter(|e| e.penalty_until.is_some_and(|until| until > now))
            .count();
        summaries.sort_by_key(|s| s.source);
        (summaries, penalized)
    }
}

/// Records refusals in the audit log and the log, through the [`Limiter`].
pub(crate) struct Refusals {
    limiter: Limiter,
    policy: RefusalPolicy,
    audit: Arc<AuditLog>,
    counters: Arc<AgentCounters>,
}

impl Refusals {
    pub(crate) fn new(
        policy: RefusalPolicy,
        audit: Arc<AuditLog>,
        counters: Arc<AgentCounters>,
    ) -> Self {
        Self {
            limiter: Limiter::new(policy, Instant::now()),
            policy,
            audit,
            counters,
        }
    }

    pub(crate) fn counters(&self) -> &Arc<AgentCounters> {
        &self.counters
    }

    fn count(
        &self,
        source: Source,
        auth: &'static str,
        reason: &str,
        stage: RefusalStage,
    ) -> Verdict {
        self.counters.refused(stage);
        let (verdict, penalized) = self.limiter.refused(source, auth, reason, Instant::now());
        if verdict == Verdict::Summarize {
            self.counters.summarized();
        }
        if penalized {
            self.counters.penalized();
            debug!(%source, "a source beyond its refusal rate is under a penalty");
        }
        verdict
    }

    /// A TLS client refused for its certificate: audited, within the rate.
    pub(crate) fn handshake_refused(&self, peer: SocketAddr, reason: String) {
        let source = Source::ip(peer.ip());
        match self.count(source, TLS_AUTH, &reason, RefusalStage::Handshake) {
            Verdict::Record => {
                warn!(peer = %peer, "{reason}");
                self.audit.handshake_refused(peer, reason);
            }
            Verdict::Summarize => debug!(peer = %peer, "{reason}"),
        }
    }

    /// A handshake that failed for another reason (not TLS, timed out): never audited, but it
    /// counts towards its source's rate and penalty like any refusal.
    pub(crate) fn handshake_failed(&self, peer: SocketAddr, reason: &str) {
        let source = Source::ip(peer.ip());
        self.count(source, TLS_AUTH, reason, RefusalStage::Handshake);
        debug!(peer = %peer, "{reason}");
    }

    /// A refused call (its `record` says who and why): within the rate, a line of its own in
    /// the log and the audit log. Returns whether it got one.
    pub(crate) fn call_refused(&self, source: Source, record: &Record) -> bool {
        let reason = format!(
            "{}: {}",
            record.rpc,
            record.error.as_deref().unwrap_or("refused")
        );
        let verdict = self.count(source, record.who.auth, &reason, RefusalStage::Call);
        verdict == Verdict::Record
    }

    /// Whether a new connection from `peer` is to be closed unanswered.
    pub(crate) fn penalized(&self, peer: SocketAddr) -> bool {
        let dropped = self.limiter.penalized(peer.ip(), Instant::now());
        if dropped {
            self.counters.penalty_drop();
        }
        dropped
    }

    /// Writes the summary line of every source with refusals counted since the last time.
    pub(crate) fn flush(&self) {
        let (summaries, penalized) = self.limiter.take_summaries(Instant::now());
        self.counters.set_penalized_sources(penalized);
        let interval = self.policy.summary_interval;
        for summary in summaries {
            let refused = summary.refused();
            let penalty = summary
                .penalized_for
                .map(|d| format!("{}", humantime::format_duration(round(d))))
                .unwrap_or_else(|| "none".to_owned());
            warn!(
                source = %summary.source,
                refused,
                dropped = summary.dropped,
                penalty,
                reasons = ?summary.reasons,
                "refusals beyond the source's rate of {} a minute, not recorded one by one",
                self.policy.per_minute
            );
            let who = Who {
                identity: None,
                auth: summary.auth,
                uid: match summary.source {
                    Source::Uid(uid) => Some(uid),
                    _ => None,
                },
                pid: None,
                peer: match summary.source {
                    Source::Ip(_) | Source::Other => Some(summary.source.to_string()),
                    Source::Uid(_) => None,
                },
                role: None,
            };
            let mut record = Record::named(who, "refusal-summary");
            record.result = Outcome::Denied;
            record.refusals = Some(RefusalSummary {
                refused,
                reasons: summary.reasons,
                dropped_while_penalized: summary.dropped,
                interval_secs: interval.as_secs_f64(),
                penalty_secs: summary.penalized_for.map(|d| round(d).as_secs_f64()),
            });
            self.audit.write(&record);
        }
    }

    /// Writes summaries every interval until `closing` turns true, then once more.
    pub(crate) async fn run(self: Arc<Self>, mut closing: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.policy.summary_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = closing.wait_for(|c| *c) => break,
            }
        }
        self.flush();
    }
}

const TLS_AUTH: &str = "tls-client-certificate";

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RefusalPolicy {
        RefusalPolicy {
            per_minute: 3,
            summary_interval: Duration::from_secs(10),
            penalty_max: Duration::from_secs(8),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn the_first_refusals_are_recorded_and_the_rest_summarized_per_source() {
        let start = Instant::now();
        let limiter = Limiter::new(policy(), start);
        let a = Source::ip(ip("10.0.0.2"));
        let b = Source::ip(ip("10.0.0.3"));
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| limiter.refused(a, TLS_AUTH, "no certificate", start).0)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Record,
                Verdict::Record,
                Verdict::Record,
                Verdict::Summarize,
                Verdict::Summarize
            ]
        );
        // Another source has its own rate.
        assert_eq!(
            limiter.refused(b, TLS_AUTH, "expired", start).0,
            Verdict::Record
        );
        let (summaries, penalized) = limiter.take_summaries(start);
        assert_eq!(penalized, 1);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].source, a);
        assert_eq!(summaries[0].refused(), 2);
        assert_eq!(summaries[0].reasons["no certificate"], 2);
        // Taken once: the next interval starts from zero.
        assert!(limiter.take_summaries(start).0.is_empty());
        // The bucket refills at the rate: one more line 20 s later (3 a minute).
        let later = start + Duration::from_secs(20);
        assert_eq!(
            limiter.refused(a, TLS_AUTH, "no certificate", later).0,
            Verdict::Record
        );
    }

    #[test]
    fn a_source_beyond_its_rate_is_penalized_longer_each_time_and_others_are_not() {
        let start = Instant::now();
        let limiter = Limiter::new(policy(), start);
        let flood = ip("10.0.0.2");
        let other = ip("10.0.0.9");
        for _ in 0..3 {
            assert!(!limiter.refused(Source::ip(flood), TLS_AUTH, "x", start).1);
        }
        assert!(limiter.refused(Source::ip(flood), TLS_AUTH, "x", start).1);
        // In-flight handshakes refused during the penalty do not lengthen it.
        assert!(!limiter.refused(Source::ip(flood), TLS_AUTH, "x", start).1);
        assert!(limiter.penalized(flood, start + Duration::from_millis(999)));
        assert!(!limiter.penalized(other, start));
        let t1 = start + Duration::from_secs(1);
        assert!(!limiter.penalized(flood, t1));
        // The next refusal doubles it, and so on up to the maximum.
        let mut now = t1;
        let mut lengths = Vec::new();
        // (Four: a fifth, 15 s on, would find a line's worth of the rate refilled.)
        for _ in 0..4 {
            assert!(limiter.refused(Source::ip(flood), TLS_AUTH, "x", now).1);
            let mut until = now;
            while limiter.penalized(flood, until) {
                until += Duration::from_millis(100);
            }
            lengths.push((until - now).as_secs());
            now = until;
        }
        assert_eq!(lengths, [2, 4, 8, 8]);
        let (summaries, _) = limiter.take_summaries(now);
        assert!(summaries[0].dropped > 0);
        // Quiet for a minute: forgiven, back to the first penalty (once beyond the rate).
        let quiet = now + FORGIVE_AFTER + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.refused(Source::ip(flood), TLS_AUTH, "x", quiet);
        }
        assert!(limiter.refused(Source::ip(flood), TLS_AUTH, "x", quiet).1);
        assert!(!limiter.penalized(flood, quiet + Duration::from_secs(1)));
    }

    #[test]
    fn unix_callers_are_summarized_but_never_penalized() {
        let start = Instant::now();
        let limiter = Limiter::new(policy(), start);
        for _ in 0..10 {
            let (_, penalized) =
                limiter.refused(Source::Uid(1000), "unix-peer-credentials", "denied", start);
            assert!(!penalized);
        }
        let (summaries, penalized) = limiter.take_summaries(start);
        assert_eq!(penalized, 0);
        assert_eq!(summaries[0].refused(), 7);
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_v4_is_v4() {
        assert_eq!(
            Source::ip(ip("2001:db8:1:2:aaaa::1")),
            Source::ip(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(
            Source::ip(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Source::ip(ip("::ffff:10.0.0.1")),
            Source::ip(ip("10.0.0.1"))
        );
    }

    #[test]
    fn many_sources_share_the_global_rate_and_one_entry_beyond_the_table() {
        let start = Instant::now();
        let limiter = Limiter::new(policy(), start);
        let recorded = (0..100u32)
            .filter(|i| {
                let source = Source::ip(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000u32 + i)));
                limiter.refused(source, TLS_AUTH, "x", start).0 == Verdict::Record
            })
            .count();
        assert_eq!(recorded, (policy().per_minute * GLOBAL_FACTOR) as usize);
        let limiter = Limiter::new(policy(), start);
        for i in 0..(MAX_SOURCES as u32 + 10) {
            limiter.refused(
                Source::ip(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000u32 + i))),
                TLS_AUTH,
                "x",
                start,
            );
        }
        let sources = limiter.state().sources.len();
        assert_eq!(sources, MAX_SOURCES + 1);
        assert!(limiter.state().sources.contains_key(&Source::Other));
    }
}
