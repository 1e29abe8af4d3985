"""The pure core: model, policy, reconcile and state transitions (standard library only, no I/O).

The core's immutable records are ``typing.NamedTuple`` classes, changed with ``_replace``, not
frozen dataclasses: a dataclass compiles its methods when its class is created, about 1 ms
each, and every command's start-up creates the records it reads (issue 8.9). Being tuples, a
record equals a plain tuple with the same values; nothing here compares records with tuples.
Mutable working values (``RunDecisions``) stay dataclasses.
"""
