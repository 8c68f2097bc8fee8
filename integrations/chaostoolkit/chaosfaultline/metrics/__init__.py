"""Probes of what the agent measures: snapshots, TCP connect health, probe targets."""
