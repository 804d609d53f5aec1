"""The control plane: the device inventory (and, as it grows, discovery, identity, firmware and
policy) that gives detection its context and response its targets (docs/architecture.md)."""
