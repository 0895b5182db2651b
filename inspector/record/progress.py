"""The live status line on stderr while recording: messages, bytes, trace size, backing ids.

A plain carriage-return line (no rich: the server's own output shares the terminal and a
`\\r` line is the least in its way), drawn only when stderr is a terminal and `-q` was
not given, at most twice a second. "backing ids open" is BACKING_OPEN results minus
BACKING_CLOSEs as the ioctl trap counts them; without the trap it is not shown.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable

from .relay import Stats


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def status_text(stats: Stats, trace_bytes: int, backing_ids: int | None) -> str:
    text = (f"fusetrace: {stats.messages} messages ({stats.requests} requests, "
            f"{stats.replies} replies), {human(stats.bytes)} relayed, trace {human(trace_bytes)}")
    if backing_ids is not None:
        text += f", {backing_ids} backing id{'' if backing_ids == 1 else 's'} open"
    return text


class Progress:
    """Redraws the status line on `tick()`; `clear()` erases it for good."""

    def __init__(self, stats: Callable[[], Stats], trace_bytes: Callable[[], int],
                 backing_ids: Callable[[], int | None], quiet: bool,
                 stream: IO[str] | None = None, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.stats = stats
        self.trace_bytes = trace_bytes
        self.backing_ids = backing_ids
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def tick(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        line = status_text(self.stats(), self.trace_bytes(), self.backing_ids())
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
