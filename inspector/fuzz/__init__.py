"""`fusetrace fuzz TRACE -- SERVER ...`: recorded requests, mutated, sent to a server.

Each try replays one recorded exchange (with the exchanges it needs, `reduce.units`)
whose request has one field mutated the way a kernel could send it (`mutate`), and looks
at what came back (`verdict`): a crash, a hang, or a reply the kernel would reject. Each
new finding is reduced with `reduce` and saved (`run`). Deterministic for a seed.
"""

from .run import Finding, fuzz

__all__ = ["Finding", "fuzz"]
