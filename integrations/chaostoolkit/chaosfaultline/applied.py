"""The faults this experiment applied, and the renewal of their leases.

`chaos run` runs one experiment per process, so what this process applied is what the experiment
applied: each fault is recorded with the agent it lives on and the name the experiment gave it,
so that later activities can name it (`fault="db-block"`) and a rollback can revert them all.

A fault applied with a lease gets a daemon thread that renews the lease every third of its
period (Faults/RenewLease) until the fault is reverted through this extension, the agent says
it has ended, or the process exits. A `chaos` process that dies stops renewing, and the agent
reverts the fault when the lease runs out: a fault outlives its experiment by at most the lease.
"""

import logging
import threading
from dataclasses import dataclass, field
from typing import List, Optional

import grpc

from chaosfaultline.agent import CALL_TIMEOUT_SECONDS, AgentAddress
from chaosfaultline.proto import faults_pb2, faults_pb2_grpc

__all__ = ["AppliedFault", "mark_reverted", "outstanding", "record", "resolve"]

logger = logging.getLogger("chaostoolkit")

_lock = threading.Lock()
# In the order they were applied.
_applied: List["AppliedFault"] = []


@dataclass(eq=False)
class AppliedFault:
    """One fault this experiment applied."""

    id: str
    address: AgentAddress
    # The experiment's name for it, or "".
    name: str
    # Lease period in seconds; 0 without a lease.
    lease: float
    # Reverted through this extension (it may also have ended on the agent's own).
    reverted: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: Optional[threading.Thread] = None

    def start_renewing(self) -> None:
        """Starts renewing the lease in the background (nothing without a lease)."""
        if self.lease <= 0:
            return
        self._renewer = threading.Thread(
            target=self._renew, name=f"faultline-lease-{self.id}", daemon=True
        )
        self._renewer.start()

    def stop_renewing(self) -> None:
        """Stops the renewals and waits for the renewing thread to end."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=CALL_TIMEOUT_SECONDS)
            logger.info(f"faultline: lease renewals of fault {self.id} stopped")

    def _renew(self) -> None:
        """Renews every third of the lease until stopped or the fault has ended."""
        period = self.lease / 3
        with self.address.channel() as channel:
            faults = faults_pb2_grpc.FaultsStub(channel)
            while not self._stop.wait(period):
                try:
                    answer = faults.RenewLease(
                        faults_pb2.RenewLeaseRequest(ids=[self.id]), timeout=period
                    )
                except grpc.RpcError as error:
                    # The lease may still be saved by the next renewal; if not, the agent
                    # reverts the fault, which is what a lease is for.
                    logger.warning(
                        f"faultline: cannot renew the lease of fault {self.id} on "
                        f"{self.address.shown}: {error.code()}: {error.details()}"
                    )
                    continue
                if answer.not_renewed:
                    refused = answer.not_renewed[0]
                    logger.info(
                        f"faultline: lease renewals of fault {self.id} stopped: "
                        f"{faults_pb2.NotRenewedReason.Name(refused.reason)}: {refused.detail}"
                    )
                    return


def record(fault: AppliedFault) -> None:
    """Records a fault this experiment applied and starts renewing its lease."""
    with _lock:
        _applied.append(fault)
    fault.start_renewing()


def resolve(fault: str) -> Optional[AppliedFault]:
    """The fault this experiment applied with that name or id ("": the latest), reverted or
    not, or None."""
    with _lock:
        if not fault:
            return _applied[-1] if _applied else None
        for applied in reversed(_applied):
            if fault in (applied.name, applied.id):
                return applied
    return None


def outstanding() -> List[AppliedFault]:
    """The faults this experiment applied and has not reverted, oldest first."""
    with _lock:
        return [f for f in _applied if not f.reverted]


def mark_reverted(fault: AppliedFault) -> None:
    """Stops renewing a fault's lease and marks it reverted (it is being reverted now)."""
    fault.stop_renewing()
    with _lock:
        fault.reverted = True
