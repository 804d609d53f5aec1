"""Transports that carry events to the detection engine beyond one process.

:mod:`fleetwarden.bus.jetstream` lays events out on a NATS JetStream stream partitioned by
device and publishes to it; the scale-out engine worker that consumes the partitions
(``fleetwarden worker --bus nats://HOST:PORT``) is an application service,
:mod:`fleetwarden.app.worker`.  The in-process path (``analyze``, ``watch``) needs no bus.
"""

from fleetwarden.bus.jetstream import DEFAULT_PARTITIONS, DEFAULT_STREAM, SUBJECT_PREFIX, publish_batches_nats

__all__ = ["DEFAULT_PARTITIONS", "DEFAULT_STREAM", "SUBJECT_PREFIX", "publish_batches_nats"]
