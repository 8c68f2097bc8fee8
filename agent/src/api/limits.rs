//! The limits that keep callers from wearing the agent down, with their defaults and flags:
//! on the remote listener, TLS connections open at once, handshakes under way and how long one
//! may take ([`ListenerLimits`], enforced by `api::tls`); on its gRPC connections, calls under
//! way per connection and the size of a request ([`CallLimitLayer`]); for every caller, Watch
//! and Metrics/Stream subscriptions open at once ([`Subscriptions`]). Each refusal is counted
//! in Prometheus (`faultline_limit_refusals_total{limit=...}`) and answered with what the limit
//! is and which flag sets it. The unix socket has the subscription and message-size limits but
//! not the per-connection call limit: it is root's way in.

use std::{
    collections::HashMap,
    hash::Hash,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tonic::{body::Body, Status};

use super::{authz::Caller, peer::TlsPeer};
use crate::monitor::counters::{AgentCounters, Limit};

pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub(crate) const DEFAULT_MAX_HANDSHAKES: usize = 64;
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MAX_STREAMS: usize = 32;
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 16;

/// `serve --max-connections`, `--max-handshakes`, `--handshake-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenerLimits {
    /// TLS connections open at once, handshakes included.
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl ListenerLimits {
    /// One source's share of the handshakes under way: a flood from one address leaves room
    /// for the others.
    pub(crate) fn handshakes_per_source(&self) -> usize {
        (self.max_handshakes / 4).max(1)
    }
}

/// How many of something are under way per key (handshakes per source, subscriptions per
/// caller, calls per connection); each claim is given back when it is dropped.
pub(crate) struct Tally<K: Hash + Eq + Clone> {
    counts: Mutex<HashMap<K, usize>>,
}

/// One claim on a [`Tally`].
pub(crate) struct Claim<K: Hash + Eq + Clone> {
    tally: Arc<Tally<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Tally<K> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more under `key`, unless it has `max` already (then how many it has).
    pub(crate) fn claim(self: &Arc<Self>, key: K, max: usize) -> Result<Claim<K>, usize> {
        let mut counts = self.counts();
        let count = counts.entry(key.clone()).or_default();
        if *count >= max {
            return Err(*count);
        }
        *count += 1;
        Ok(Claim {
            tally: Arc::clone(self),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for Claim<K> {
    fn drop(&mut self) {
        let mut counts = self.tally.counts();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Watch and Metrics/Stream calls open per caller (`serve --max-subscriptions`).
pub(crate) struct Subscriptions {
    max: usize,
    open: Arc<Tally<String>>,
    counters: Arc<AgentCounters>,
}

/// One open subscription; closed when dropped (the stream ended, or its client went away).
pub(crate) type Subscription = Claim<String>;

impl Subscriptions {
    pub(crate) fn new(max: usize, counters: Arc<AgentCounters>) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Tally::new(),
            counters,
        })
    }

    /// Opens a subscription of `caller`, unless it has the most it may.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        caller: &Caller,
        rpc: &str,
    ) -> Result<Subscription, Status> {
        let name = caller.to_string();
        self.open.claim(name.clone(), self.max).map_err(|count| {
            self.counters.limited(Limit::Subscriptions);
            Status::resource_exhausted(format!(
                "{name} has {count} Watch and Metrics/Stream calls open, the most a caller may \
                 (faultline serve --max-subscriptions {}); close one before {rpc}",
                self.max
            ))
        })
    }
}

/// A tower layer over the gRPC services: refuses a call on a TLS connection that already has
/// `max_streams` calls under way (a streaming call counts until its stream ends), and counts
/// the requests tonic refused for their size.
#[derive(Clone)]
pub(crate) struct CallLimitLayer {
    state: Arc<CallState>,
}

struct CallState {
    /// `None`: no per-connection limit (the unix socket).
    max_streams: Option<usize>,
    /// Calls under way per TLS connection, by the client's address and port.
    under_way: Arc<Tally<SocketAddr>>,
    counters: Arc<AgentCounters>,
}

impl CallLimitLayer {
    pub(crate) fn new(max_streams: Option<usize>, counters: Arc<AgentCounters>) -> Self {
        Self {
            state: Arc::new(CallState {
                max_streams,
                under_way: Tally::new(),
                counters,
            }),
        }
    }
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> CallLimit<S> {
        CallLimit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Clone)]
pub(crate) struct CallLimit<S> {
    inner: S,
    state: Arc<CallState>,
}

/// A call's place among its connection's calls under way.
type UnderWay = Claim<SocketAddr>;

/// gRPC's OUT_OF_RANGE: what tonic answers a request larger than the decoding limit with
/// (the agent's own services never use it).
const OUT_OF_RANGE: &str = "11";

impl<S> tower::Service<http::Request<Body>> for CallLimit<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let peer = request.extensions().get::<TlsPeer>().map(|p| p.remote);
        let under_way = match (peer, state.max_streams) {
            (Some(peer), Some(max)) => match state.under_way.claim(peer, max) {
                Ok(claim) => Some(claim),
                Err(_) => {
                    state.counters.limited(Limit::Streams);
                    let status = Status::resource_exhausted(format!(
                        "this connection has {max} calls under way, the most the agent allows \
                         on one (faultline serve --max-streams); wait for one to end, or open \
                         another connection"
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            _ => None,
        };
        // The service that was made ready is the one that is called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|s| s == OUT_OF_RANGE)
            {
                state.counters.limited(Limit::MessageSize);
            }
            Ok(match under_way {
                // A stream is under way until its body ends.
                Some(under_way) => response.map(|body| {
                    Body::new(Held {
                        body,
                        _under_way: under_way,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that holds its call's place until it is dropped.
struct Held {
    body: Body,
    _under_way: UnderWay,
}

impl http_body::Body for Held {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_has_its_own_subscriptions() {
        let counters = Arc::new(AgentCounters::default());
        let subscriptions = Subscriptions::new(2, Arc::clone(&counters));
        let alice = Caller::Certificate {
            name: "alice".to_owned(),
            peer: "10.0.0.2:40000".parse().expect("address"),
        };
        let root = Caller::Unix { uid: 0, pid: None };
        let first = subscriptions.subscribe(&alice, "Faults/Watch").expect("1");
        let _second = subscriptions.subscribe(&alice, "Faults/Watch").expect("2");
        let refused = subscriptions
            .subscribe(&alice, "Metrics/Stream")
            .err()
            .expect("a third is refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("alice has 2")
                && refused.message().contains("--max-subscriptions 2"),
            "{}",
            refused.message()
        );
        assert!(subscriptions.subscribe(&root, "Faults/Watch").is_ok());
        drop(first);
        assert!(subscriptions.subscribe(&alice, "Faults/Watch").is_ok());
        assert_eq!(counters.get_limited(Limit::Subscriptions), 1);
    }

    #[test]
    fn a_tally_counts_per_key_and_takes_claims_back() {
        let tally = Tally::new();
        let a: SocketAddr = "10.0.0.2:40000".parse().expect("address");
        let b: SocketAddr = "10.0.0.2:40001".parse().expect("address");
        let one = tally.claim(a, 2).expect("1");
        let _two = tally.claim(a, 2).expect("2");
        assert_eq!(tally.claim(a, 2).err(), Some(2));
        assert!(tally.claim(b, 2).is_ok());
        drop(one);
        assert!(tally.claim(a, 2).is_ok());
        drop(_two);
        assert!(tally.counts().get(&a).is_none_or(|n| *n <= 1));
    }
}
