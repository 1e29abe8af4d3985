"""The pure core: model, policy, reconcile and state transitions (standard library only, no I/O)."""
