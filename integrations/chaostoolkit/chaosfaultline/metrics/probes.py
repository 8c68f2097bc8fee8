"""Probes of what the agent measures (the Metrics service): a whole snapshot, TCP connect health
towards one destination, and the agent's probe targets (`faultline serve --probe`).

Connect health is counted in the kernel since the agent started; with `window` seconds the
probe takes two snapshots that far apart and reports the difference, as `faultline fleet run`
grades its guards: ratios over the connects that ended in the window, the p95 connect time as the
upper bound of the latency bucket the 95th percentile falls in.
"""

import ipaddress
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration, Secrets
from google.protobuf import json_format

from chaosfaultline.agent import CALL_TIMEOUT_SECONDS, Agent, rpc
from chaosfaultline.proto import metrics_pb2, metrics_pb2_grpc

__all__ = ["metrics_snapshot", "probe_target_status", "probe_target_up", "tcp_connect_health"]


def _snapshot(agent: Agent) -> metrics_pb2.MetricsSnapshot:
    with rpc("Metrics/Snapshot", agent.address):
        return metrics_pb2_grpc.MetricsStub(agent.channel).Snapshot(
            metrics_pb2.SnapshotRequest(), timeout=CALL_TIMEOUT_SECONDS
        )


def metrics_snapshot(
    configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """One snapshot of everything the agent measures: host CPU, memory, disk and network, TCP
    connect health per destination, probe targets, active faults (as `faultline metrics -o
    json`, in the API's JSON mapping: its field names, 64-bit counters as strings)."""
    with Agent(configuration, secrets) as agent:
        snapshot = _snapshot(agent)
    return json_format.MessageToDict(snapshot, preserving_proto_field_name=True)


Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _destination(text: str) -> Tuple[Address, int]:
    """ "10.0.0.5:5432" or "[2001:db8::7]:443" as an address and a port."""
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError("no port")
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        raise ActivityFailed(
            f"destination {text!r}: expected ADDRESS:PORT (10.0.0.5:5432, [2001:db8::7]:443)"
        ) from None


def _counts(snapshot: metrics_pb2.MetricsSnapshot, addr: Address, port: int) -> Dict[str, Any]:
    """The counters of one destination in a snapshot (zero when it has none)."""
    for d in snapshot.tcp:
        if d.port == port and ipaddress.ip_address(d.addr) == addr:
            return {
                "attempts": d.attempts,
                "successes": d.successes,
                "refused": d.refused,
                "timed_out": d.timed_out,
                "other_failures": d.other_failures,
                "retransmits": d.retransmits,
                "latency": [(b.le, b.count) for b in d.latency],
            }
    return {
        "attempts": 0,
        "successes": 0,
        "refused": 0,
        "timed_out": 0,
        "other_failures": 0,
        "retransmits": 0,
        "latency": [],
    }


def _p95(latency: List[Tuple[float, int]]) -> Optional[float]:
    total = sum(n for _, n in latency)
    if total == 0:
        return None
    rank = max(1, -(-95 * total // 100))
    seen = 0
    for le, n in sorted(latency):
        seen += n
        if seen >= rank:
            return le
    return None


def tcp_connect_health(
    destination: str,
    window: float = 0.0,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """TCP connects from the agent's host to `destination` (ADDRESS:PORT), as the kernel counted
    them: since the agent started, or over the next `window` seconds. Returns `attempts`,
    `successes`, `refused`, `timed_out`, `other_failures`, `failures`, `retransmits`,
    `failure_ratio` (failures over connects that ended; null when none ended) and
    `p95_seconds` (null without a successful connect). Fails when the agent cannot count
    connects here, with its reason."""
    addr, port = _destination(destination)
    with Agent(configuration, secrets) as agent:
        after = _snapshot(agent)
        if after.tcp_unavailable:
            raise ActivityFailed(f"TCP connect health is unavailable: {after.tcp_unavailable}")
        now = _counts(after, addr, port)
        if window > 0:
            time.sleep(window)
            before, now = now, _counts(_snapshot(agent), addr, port)
            old_latency = dict(before["latency"])
            for key in ("attempts", "successes", "refused", "timed_out", "other_failures",
                        "retransmits"):
                now[key] = max(0, now[key] - before[key])
            now["latency"] = [(le, max(0, n - old_latency.get(le, 0))) for le, n in now["latency"]]
    failures = now["refused"] + now["timed_out"] + now["other_failures"]
    ended = now["successes"] + failures
    return {
        "destination": destination,
        "window_seconds": window or None,
        "attempts": now["attempts"],
        "successes": now["successes"],
        "refused": now["refused"],
        "timed_out": now["timed_out"],
        "other_failures": now["other_failures"],
        "failures": failures,
        "retransmits": now["retransmits"],
        "failure_ratio": failures / ended if ended else None,
        "p95_seconds": _p95(now["latency"]),
    }


def probe_target_status(
    target: str, configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """The agent's last check of probe target `target` (as given to `faultline serve --probe`):
    `up`, `last_latency_seconds`, `last_error`, `successes`, `failures`, `last_checked`."""
    with Agent(configuration, secrets) as agent:
        snapshot = _snapshot(agent)
    for probe in snapshot.probes:
        if probe.target == target:
            return {
                "target": probe.target,
                "up": probe.up,
                "last_latency_seconds": probe.last_latency_seconds
                if probe.HasField("last_latency_seconds")
                else None,
                "last_error": probe.last_error,
                "successes": probe.successes,
                "failures": probe.failures,
                "last_checked": probe.last_checked.ToJsonString()
                if probe.HasField("last_checked")
                else None,
            }
    known = ", ".join(p.target for p in snapshot.probes) or "none"
    raise ActivityFailed(
        f"the agent at {agent.address.shown} has no probe target {target!r} (its targets: {known})"
    )


def probe_target_up(
    target: str, configuration: Configuration = None, secrets: Secrets = None
) -> bool:
    """Whether the agent's last check of probe target `target` connected (see
    `probe_target_status`); for a steady-state hypothesis with `"tolerance": true`."""
    return bool(probe_target_status(target, configuration, secrets)["up"])
