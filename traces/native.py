"""The C loops of `_scan.c` when the extension is built, else None: every caller keeps
an equivalent Python loop (the extension is optional, like the relay's)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from .records import FIELDS, QUICK_RULES

rows: Callable[..., tuple[int, int, tuple[bytes, ...]]] | None
plain_until: Callable[[list[Any], int, int], int] | None
try:
    from . import _scan
except ImportError:
    rows = plain_until = None
else:
    rows = _scan.rows
    #: IOCTL and EVENT records are judged in C too, by the rules of `records.problem`
    plain_until = partial(_scan.plain_until, rules=(QUICK_RULES, FIELDS))
