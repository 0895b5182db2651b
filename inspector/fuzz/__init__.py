"""`fusetrace fuzz TRACE -- SERVER ...`: mutated recorded requests streamed to a live server.

Each worker keeps one server running on one connection (`inspector.target`), plays the
recording to it once and then sends tries: recorded requests rewritten to the live ids
and mutated (`mutate`). Failures are confirmed on a fresh server, reduced with `reduce`
and saved only when the saved command reproduces them (`run`).
"""

from .run import Finding, Fuzzer, Stats, fuzz

__all__ = ["Finding", "Fuzzer", "Stats", "fuzz"]
