"""Chaos Toolkit extension for faultline: apply faults on faultline agents with leases renewed
while the experiment runs, revert them (one, or all the experiment applied, for rollbacks), and
read fault state, TCP connect health, metrics snapshots and probe targets for steady-state
hypotheses.

Activities: `chaosfaultline.faults.actions`, `chaosfaultline.faults.probes`,
`chaosfaultline.metrics.probes`; `chaos discover chaostoolkit-faultline` lists them.
"""

import logging
from typing import List

from chaoslib.discovery.discover import (
    discover_actions,
    discover_probes,
    initialize_discovery_result,
)
from chaoslib.types import DiscoveredActivities, Discovery

from chaosfaultline.agent import describe_agent

__version__ = "0.1.0"
__all__ = ["__version__", "discover"]

logger = logging.getLogger("chaostoolkit")


def discover(discover_system: bool = True) -> Discovery:
    """The extension's activities and, with `discover_system`, what the agent named by
    FAULTLINE_AGENT (or on the default socket) reports about itself and its kernel."""
    logger.info("Discovering capabilities from chaostoolkit-faultline")
    discovery = initialize_discovery_result("chaostoolkit-faultline", __version__, "faultline")
    discovery["activities"].extend(load_exported_activities())
    if discover_system:
        discovery["system"] = describe_agent()
    return discovery


def load_exported_activities() -> List[DiscoveredActivities]:
    """Every action and probe the extension exports."""
    activities: List[DiscoveredActivities] = []
    activities.extend(discover_actions("chaosfaultline.faults.actions"))
    activities.extend(discover_probes("chaosfaultline.faults.probes"))
    activities.extend(discover_probes("chaosfaultline.metrics.probes"))
    return activities
