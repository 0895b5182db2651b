"""`fusetrace reduce TRACE -o SMALL.fzt -- SERVER ...`: the smallest trace that still fails.

Delta debugging (ddmin) over the trace's exchanges (a request with its reply, the ioctls
the server made for it and the INTERRUPTs naming it): each candidate keeps INIT, the
session's events and notifications, and the exchanges its exchanges depend on (the reply
that handed out a node id or a file handle a request names), and is kept when its replay
fails with the same signature (`signature`: the live target's structured outcome, or
with `--keep` a replay difference). Modules: `units` (the trace cut into exchanges and
their dependencies), `signature`, `ddmin`, `command`.
"""

from .ddmin import Reduction, reduce_trace
from .signature import Signature

__all__ = ["Reduction", "Signature", "reduce_trace"]
