"""Probes of faults: the state of one (by the name this experiment gave it, or an id), all it
records, and how many faults the agent holds active.

What a fault does to traffic shows in `chaosfaultline.metrics.probes.tcp_connect_health`; per-
fault effect counters (packets matched, dropped, delayed) come with the agent's effect counters.
"""

from typing import Any, Dict

from chaoslib.exceptions import ActivityFailed
from chaoslib.types import Configuration, Secrets

from chaosfaultline import applied, spec
from chaosfaultline.agent import CALL_TIMEOUT_SECONDS, Agent, agent_address, rpc
from chaosfaultline.proto import faults_pb2, faults_pb2_grpc

__all__ = ["count_active_faults", "fault_details", "fault_state"]


def _get(fault: str, configuration: Configuration, secrets: Secrets) -> faults_pb2.Fault:
    """The agent's record of a fault this experiment applied (by name or id; "" the latest),
    else of any fault on the configured agent by id."""
    recorded = applied.resolve(fault)
    if recorded is None and not fault:
        raise ActivityFailed("this experiment has applied no fault yet")
    if recorded is not None:
        address, fault_id = recorded.address, recorded.id
    else:
        address, fault_id = agent_address(configuration, secrets), fault
    with address.channel() as channel, rpc(f"getting fault {fault_id}", address):
        return faults_pb2_grpc.FaultsStub(channel).Get(
            faults_pb2.GetRequest(id=fault_id), timeout=CALL_TIMEOUT_SECONDS
        )


def fault_state(
    fault: str = "", configuration: Configuration = None, secrets: Secrets = None
) -> str:
    """The fault's state as the CLI shows it: "pending", "active", "reverting", "reverted" or
    "failed". `fault`: a name this experiment gave, or an id ("": the latest it applied)."""
    return spec.state_name(_get(fault, configuration, secrets).state)


def fault_details(
    fault: str = "", configuration: Configuration = None, secrets: Secrets = None
) -> Dict[str, Any]:
    """Everything the agent records about the fault: spec, labels, state, reason it ended,
    deadline, lease and its expiry, kernel plan. `fault` as for `fault_state`."""
    return spec.fault_json(_get(fault, configuration, secrets))


def count_active_faults(configuration: Configuration = None, secrets: Secrets = None) -> int:
    """How many faults the configured agent holds active now (by anyone)."""
    with Agent(configuration, secrets) as agent, rpc("listing faults", agent.address):
        faults = faults_pb2_grpc.FaultsStub(agent.channel).List(
            faults_pb2.ListRequest(), timeout=CALL_TIMEOUT_SECONDS
        ).faults
    return sum(1 for f in faults if f.state == faults_pb2.FAULT_STATE_ACTIVE)
