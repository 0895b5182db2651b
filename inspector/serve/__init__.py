"""`fusetrace serve TRACE MOUNTPOINT`: a recorded trace mounted as a mock filesystem.

The kernel's requests are answered with recorded replies, matched by opcode, node id and
arguments (`keys.py`), each reply used once in recorded order with repeats when the
kernel asks again (`book.py` has the rule). What the trace cannot answer gets
`--miss-errno` (EIO by default) and is reported at the end with the closest recorded
request and the fields that differ.

Caveats: a passthrough open is served without passthrough, so the reads and writes the
recorded server never saw cannot be answered; READ data cut by the snap length is
answered EIO (record with `-s 0` to serve file contents); notifications the recorded
server sent are not replayed.
"""

from __future__ import annotations

import errno

from .book import BadTrace, ReplyBook
from .report import Miss, ServeReport
from .responder import Responder
from .session import ServeConfig, ServeError, serve

__all__ = ["BadTrace", "Miss", "ReplyBook", "Responder", "ServeConfig", "ServeError",
           "ServeReport", "parse_errno", "serve"]


def parse_errno(text: str) -> int:
    """`EIO`, `eio` or `5` → 5; ValueError for anything else (argparse shows it)."""
    value = getattr(errno, text.upper(), None) if not text.isdigit() else int(text)
    if not isinstance(value, int) or not 0 < value < 4096:
        raise ValueError(f"not an errno name or number: {text!r}")
    return value
