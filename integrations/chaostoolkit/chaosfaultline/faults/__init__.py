"""Actions that apply and revert faults, and probes of their state."""
