"""The schemas every layer shares: events and their batches, findings and incidents, the detection
context.  Imports nothing of FleetWarden's (docs/architecture.md)."""
