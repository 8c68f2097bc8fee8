"""Actions: apply a fault of each kind, revert one, revert all this experiment applied.

Every apply takes the fault's fields as the gRPC API names them (see `chaosfaultline.spec` for
how durations, enums and ports are written), then:

- `duration`: seconds the fault lasts at most (the agent reverts it at its deadline);
- `lease`: seconds; the extension renews the lease in the background every third of it while
  the experiment runs, so a `chaos` process that dies leaves the fault for at most that long.
  0 applies without a lease. A lease longer than the duration is shortened to it;
- `name`: how later activities of this experiment name the fault (`fault="db-block"`);
- `labels`: more labels for the fault (`client` and, with a name, `chaostoolkit/name` are set);
- `force`: override the agent's safety guards, as `faultline ... --force` does.

Each returns the fault as the agent reports it (`id`, `state`, `deadline`, `plan`, ...).
"""

import logging
from typing import Any, Dict, List, Optional

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration, Secrets

from chaosfaultline import applied, spec
from chaosfaultline.agent import CALL_TIMEOUT_SECONDS, Agent, rpc
from chaosfaultline.proto import faults_pb2, faults_pb2_grpc

__all__ = [
    "apply_block",
    "apply_cpu_stress",
    "apply_loss",
    "apply_memory_stress",
    "apply_netem",
    "apply_rate",
    "revert_experiment_faults",
    "revert_fault",
]

logger = logging.getLogger("chaostoolkit")

# Renewed every 5 s: survives a renewal lost to a busy agent, and bounds a dead run's fault.
DEFAULT_LEASE_SECONDS = 15.0


def _apply(
    kind: str,
    fields: Dict[str, Any],
    duration: float,
    lease: float,
    name: str,
    labels: Optional[Dict[str, str]],
    force: bool,
    configuration: Configuration,
    secrets: Secrets,
) -> Dict[str, Any]:
    """Applies one fault, records it for this experiment and starts renewing its lease."""
    if name and applied.resolve(name) is not None:
        raise ActivityFailed(f"this experiment already applied a fault named {name!r}")
    all_labels = {"client": "chaostoolkit-faultline", **(labels or {})}
    if name:
        all_labels["chaostoolkit/name"] = name
    lease = min(lease, duration)
    request = faults_pb2.ApplyRequest(
        spec=spec.fault_spec(kind, fields),
        duration=spec.duration(duration),
        labels=all_labels,
        force=force,
    )
    if lease > 0:
        request.lease.CopyFrom(spec.duration(lease))
    with Agent(configuration, secrets) as agent:
        with rpc(f"applying a {kind} fault", agent.address):
            fault = faults_pb2_grpc.FaultsStub(agent.channel).Apply(
                request, timeout=CALL_TIMEOUT_SECONDS
            ).fault
        applied.record(applied.AppliedFault(fault.id, agent.address, name, lease))
    logger.info(
        f"faultline: applied {kind} fault {fault.id} on {agent.address.shown} for {duration}s"
        + (f", lease {lease}s renewed in the background" if lease > 0 else "")
    )
    return spec.fault_json(fault)


def apply_block(
    duration: float,
    direction: str = "ingress",
    match: Optional[Dict[str, Any]] = None,
    reject: bool = False,
    percent: Optional[float] = None,
    device: str = "",
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Blocks packets with nftables (BlockSpec): those in `direction` ("ingress", "egress")
    matching `match` ({"protocol": "tcp", "ports": [8080], "cidrs": ["10.0.0.0/8"]}), dropped,
    or answered with a reset / unreachable when `reject`; `percent` of them (all when unset);
    on `device` only when given."""
    fields = {
        "direction": spec.enum("DIRECTION", direction),
        "match": spec.packet_match(match),
        "reject": reject or None,
        "percent": percent,
        "device": device,
    }
    return _apply("block", fields, duration, lease, name, labels, force, configuration, secrets)


def apply_loss(
    device: str,
    percent: float,
    duration: float,
    direction: str = "egress",
    match: Optional[Dict[str, Any]] = None,
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Drops `percent` of the packets matching `match` on `device` in `direction` with an
    eBPF classifier (LossSpec; no netem needed)."""
    fields = {
        "device": device,
        "direction": spec.enum("DIRECTION", direction),
        "percent": percent,
        "match": spec.packet_match(match),
    }
    return _apply("loss", fields, duration, lease, name, labels, force, configuration, secrets)


def _shape_target(
    device: str, direction: str, match: Optional[Dict[str, Any]], cgroup: str
) -> Dict[str, Any]:
    return {
        "device": device,
        "direction": spec.enum("DIRECTION", direction),
        "match": spec.packet_match(match),
        "cgroup": cgroup,
    }


def apply_netem(
    device: str,
    duration: float,
    direction: str = "egress",
    match: Optional[Dict[str, Any]] = None,
    cgroup: str = "",
    delay: float = 0.0,
    jitter: float = 0.0,
    delay_correlation: float = 0.0,
    distribution: str = "",
    loss: float = 0.0,
    loss_correlation: float = 0.0,
    duplicate: float = 0.0,
    duplicate_correlation: float = 0.0,
    corrupt: float = 0.0,
    corrupt_correlation: float = 0.0,
    reorder: float = 0.0,
    reorder_correlation: float = 0.0,
    gap: int = 0,
    rate_bps: Optional[int] = None,
    limit: int = 0,
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Shapes the packets matching `match` (and, egress, sent from `cgroup`) on `device` with
    netem (NetemSpec): `delay` and `jitter` in seconds with a `distribution` ("uniform",
    "normal", "pareto", "paretonormal"), `loss`, `duplicate`, `corrupt` and `reorder` in
    percent with their correlations, `gap`, netem's own `rate_bps` and packet `limit`."""
    fields = {
        "target": _shape_target(device, direction, match, cgroup),
        "delay": spec.seconds(delay) if delay else None,
        "jitter": spec.seconds(jitter) if jitter else None,
        "delay_correlation": delay_correlation or None,
        "distribution": spec.enum("DELAY_DISTRIBUTION", distribution),
        "loss": loss or None,
        "loss_correlation": loss_correlation or None,
        "duplicate": duplicate or None,
        "duplicate_correlation": duplicate_correlation or None,
        "corrupt": corrupt or None,
        "corrupt_correlation": corrupt_correlation or None,
        "reorder": reorder or None,
        "reorder_correlation": reorder_correlation or None,
        "gap": gap or None,
        "rate_bps": rate_bps,
        "limit": limit or None,
    }
    return _apply("netem", fields, duration, lease, name, labels, force, configuration, secrets)


def apply_rate(
    device: str,
    rate_bps: int,
    duration: float,
    direction: str = "egress",
    match: Optional[Dict[str, Any]] = None,
    cgroup: str = "",
    burst: Optional[int] = None,
    latency: Optional[float] = None,
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Caps the packets matching `match` (and, egress, sent from `cgroup`) on `device` at
    `rate_bps` bits per second with tbf (RateSpec); `burst` bytes, `latency` seconds."""
    fields = {
        "target": _shape_target(device, direction, match, cgroup),
        "rate_bps": rate_bps,
        "burst": burst,
        "latency": spec.seconds(latency) if latency is not None else None,
    }
    return _apply("rate", fields, duration, lease, name, labels, force, configuration, secrets)


def apply_cpu_stress(
    load: float,
    duration: float,
    cpus: Optional[List[int]] = None,
    cores: Optional[int] = None,
    ramp: float = 0.0,
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Holds `load` percent of the CPUs in scope busy in a cgroup of the fault's own
    (CpuStressSpec): pinned to `cpus`, or a share of `cores` CPUs, or of all; rising over
    `ramp` seconds."""
    fields = {
        "load": load,
        "cpus": cpus or None,
        "cores": cores,
        "ramp": spec.seconds(ramp) if ramp else None,
    }
    return _apply("cpu", fields, duration, lease, name, labels, force, configuration, secrets)


def apply_memory_stress(
    duration: float,
    bytes: Optional[int] = None,
    percent: Optional[float] = None,
    rate: Optional[int] = None,
    lock: bool = False,
    lease: float = DEFAULT_LEASE_SECONDS,
    name: str = "",
    labels: Optional[Dict[str, str]] = None,
    force: bool = False,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> Dict[str, Any]:
    """Holds `bytes` of memory, or `percent` of the host's, in a cgroup of the fault's own
    (MemoryStressSpec), allocated at `rate` bytes per second, locked with `lock`."""
    if (bytes is None) == (percent is None):
        raise ActivityFailed("memory stress: give exactly one of bytes and percent")
    fields = {
        "bytes": bytes,
        "percent": percent,
        "rate": rate,
        "lock": lock or None,
    }
    return _apply("memory", fields, duration, lease, name, labels, force, configuration, secrets)


def _revert(fault: applied.AppliedFault) -> Dict[str, Any]:
    """Reverts one recorded fault, stopping its renewals first."""
    applied.mark_reverted(fault)
    with fault.address.channel() as channel, rpc(f"reverting fault {fault.id}", fault.address):
        reverted = faults_pb2_grpc.FaultsStub(channel).Revert(
            faults_pb2.RevertRequest(id=fault.id), timeout=CALL_TIMEOUT_SECONDS
        )
    logger.info(f"faultline: reverted fault {fault.id} ({spec.state_name(reverted.state)})")
    return spec.fault_json(reverted)


def revert_fault(
    fault: str = "", configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """Reverts a fault and stops renewing its lease: one this experiment applied, by the name
    it gave or its id ("": the latest it applied), or any fault on the configured agent by id.
    Returns the fault as the agent reports it after the revert."""
    recorded = applied.resolve(fault)
    if recorded is not None:
        return _revert(recorded)
    if not fault:
        raise ActivityFailed("this experiment has applied no fault to revert")
    with Agent(configuration, secrets) as agent, rpc(f"reverting fault {fault}", agent.address):
        reverted = faults_pb2_grpc.FaultsStub(agent.channel).Revert(
            faults_pb2.RevertRequest(id=fault), timeout=CALL_TIMEOUT_SECONDS
        )
    return spec.fault_json(reverted)


def revert_experiment_faults() -> List[Dict[str, Any]]:
    """Reverts every fault this experiment applied and has not reverted yet, newest first, on
    whichever agent each lives (for `rollbacks`). Tries them all; fails afterwards, naming
    those that could not be reverted. Returns the reverted faults."""
    reverted: List[Dict[str, Any]] = []
    failures: List[str] = []
    for fault in reversed(applied.outstanding()):
        try:
            reverted.append(_revert(fault))
        except ActivityFailed as error:
            failures.append(str(error))
    if failures:
        raise ActivityFailed("; ".join(failures))
    return reverted
