"""Record kinds, the `Record` a reader hands out, and the one shape check every reader uses.

On disk a record is a msgpack array, raw bytes first (see `writer.py`):
    [1, ts, raw(, meta)]  REQUEST   kernel → server
    [2, ts, raw(, meta)]  REPLY     server → kernel (a notification when unique == 0)
    [3, ts, meta]         IOCTL     a /dev/fuse ioctl the server made
    [4, ts, meta]         EVENT     session events, meta["event"] names it
`problem()` is shared by the streaming reader and the index builder, so both stop at
exactly the same record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

TS_LIMIT = 1 << 63  # timestamps are stored as int64 in the index


class Kind(enum.IntEnum):
    """The first item of every record array."""

    REQUEST = 1
    REPLY = 2
    IOCTL = 3
    EVENT = 4


@dataclass(slots=True)
class Record:
    """One record: where it sits in the file, when it happened, the bytes and their notes.

    Not frozen: a frozen dataclass costs twice as much to build, and readers build millions.
    """

    index: int  # 0-based, the header is not a record
    offset: int  # file offset of the record's first byte
    kind: Kind
    ts: int  # monotonic nanoseconds
    raw: bytes | None  # message bytes as forwarded (REQUEST/REPLY), else None
    meta: dict[str, Any]

    @property
    def is_request(self) -> bool:
        return self.kind is Kind.REQUEST

    @property
    def is_reply(self) -> bool:
        """A reply or a notification (server → kernel)."""
        return self.kind is Kind.REPLY

    @property
    def is_ioctl(self) -> bool:
        return self.kind is Kind.IOCTL

    @property
    def is_event(self) -> bool:
        return self.kind is Kind.EVENT

    @property
    def event(self) -> str | None:
        """The event name of an EVENT record."""
        return self.meta["event"] if self.kind is Kind.EVENT else None

    @property
    def true_len(self) -> int:
        """Length of the message as sent, even when the snap length cut `raw` (0 if none)."""
        if self.raw is None:
            return 0
        length = self.meta.get("len")
        return length if type(length) is int else len(self.raw)

    @property
    def truncated(self) -> bool:
        """True when `raw` holds only the first bytes of the message."""
        return self.raw is not None and self.true_len > len(self.raw)

    @property
    def altered(self) -> bool:
        """True when the proxy forwarded something other than what it received."""
        return "original" in self.meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def problem(obj: Any) -> str | None:
    """Why a decoded msgpack object is not a valid record, or None when it is."""
    if type(obj) is not list:
        return f"expected a record array, found {type(obj).__name__} {_short(obj)}"
    n = len(obj)
    if n != 3 and n != 4:
        return f"record array of {n} items"
    kind, ts = obj[0], obj[1]
    if type(kind) is not int or not 1 <= kind <= 4:
        return f"unknown record kind {_short(kind)}"
    if type(ts) is not int or not 0 <= ts < TS_LIMIT:
        return f"bad timestamp {_short(ts)}"
    if kind <= 2:
        if type(obj[2]) is not bytes:
            return f"{Kind(kind).name} without message bytes"
        if n == 4 and type(obj[3]) is not dict:
            return f"{Kind(kind).name} meta is not a map"
        return None
    meta = obj[2]
    if n != 3 or type(meta) is not dict:
        return f"{Kind(kind).name} record without its map"
    if kind == 3 and type(meta.get("cmd")) is not int:
        return "IOCTL record without a command number"
    if kind == 4 and type(meta.get("event")) is not str:
        return "EVENT record without a name"
    return None


_KINDS = (None, *Kind)


def decode(obj: Any, index: int, offset: int) -> Record:
    """A `Record` from an object `problem()` accepted."""
    kind = _KINDS[obj[0]]
    if kind <= 2:
        return Record(index, offset, kind, obj[1], obj[2], obj[3] if len(obj) == 4 else {})
    return Record(index, offset, kind, obj[1], None, obj[2])


def cut_note(offset: int, good_records: int, detail: str) -> str:
    """The `.tail` message of readers and the index."""
    return f"trace cut at byte {offset} after {good_records} good records: {detail}"
