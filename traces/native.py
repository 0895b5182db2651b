"""The C loops of `_scan.c` when the extension is built, else None: every caller keeps
an equivalent Python loop (the extension is optional, like the relay's)."""

from __future__ import annotations

from typing import Any, Callable

rows: Callable[..., tuple[int, int, tuple[bytes, ...]]] | None
plain_until: Callable[[list[Any], int, int], int] | None
try:
    from ._scan import plain_until, rows
except ImportError:
    rows = plain_until = None
