"""Lifecycles of the ids a FUSE session hands around, and what went wrong with them.

One pass over a trace (`analyse`) follows every backing id (BACKING_OPEN → open replies
carrying it → RELEASE of those handles → BACKING_CLOSE; Android: PASSTHROUGH_OPEN → the
open reply that consumes it), file handle (open reply → uses → RELEASE), node id (entry
replies, +1 lookup each → FORGET) and, on demand, request (unique → reply, INTERRUPT or
none). `fusetrace check|follow|stats` and the TUI all read the same `Analysis`.

Modules: `model` (LifeEvent, Lifecycle, Anomaly), `wire` (the few fields the pass reads,
straight from the bytes), `kinds` (the anomaly catalogue), `analysis` (the pass).
"""

from .analysis import Analysis, analyse
from .kinds import ANOMALY_KINDS
from .model import SUBJECT_KINDS, Anomaly, LifeEvent, Lifecycle

__all__ = ["ANOMALY_KINDS", "SUBJECT_KINDS", "Analysis", "Anomaly", "LifeEvent", "Lifecycle",
           "analyse"]
