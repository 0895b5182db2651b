"""Opening a trace for browsing: the index handed over as soon as it exists, so the first
screen shows while a big trace is still being indexed.

`TraceIndex` may be read by one thread while another adds rows (its `error` column is
appended last, so `len()` never counts a half-added row). `TraceIndex.open` returns only
once the build is done; `open_early` subclasses it to publish the object the moment it is
created, and the caller shows all rows but the last (whose end offset the builder has not
stored yet) while the build goes on.
"""

from __future__ import annotations

import os
from typing import Callable

from traces import TraceIndex
from traces.opening import open_trace
from traces.stream import Progress, TraceFile


def open_early(path: str | os.PathLike[str], on_created: Callable[[TraceIndex], None],
               progress: Progress | None = None) -> TraceIndex:
    """`TraceIndex.open(path, progress)`, calling `on_created(index)` before the build."""

    class EarlyIndex(TraceIndex):
        def __init__(self, trace: TraceFile, cache_paths: list) -> None:  # type: ignore[type-arg]
            super().__init__(trace, cache_paths)
            on_created(self)

    return EarlyIndex.open(path, progress)


def check_trace(path: str) -> None:
    """Raise `TraceReadError` (one line) when `path` is not a readable trace at all."""
    open_trace(path).close()
