"""Record kinds, the `Record` a reader hands out, and the one shape check every reader uses.

On disk a record is a msgpack array, raw bytes first (see `writer.py`):
    [1, ts, raw(, meta)]  REQUEST   kernel → server
    [2, ts, raw(, meta)]  REPLY     server → kernel (a notification when unique == 0)
    [3, ts, meta]         IOCTL     a /dev/fuse ioctl the server made
    [4, ts, meta]         EVENT     session events, meta["event"] names it
`problem()` is shared by the streaming reader and the index builder, so both stop at
exactly the same record. A trace is untrusted input: `problem()` checks every field a
reader hands on (the known meta keys by type and range, whatever the kind; other values
only as plain msgpack data, not nested too deeply), so the code above never meets an
ioctl `arg` that is an integer or a `len` shorter than the bytes kept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

TS_LIMIT = 1 << 63  # timestamps are stored as int64 in the index
MAX_DEPTH = 8  # nesting of meta values (lists and maps); writers use two at most


class Kind(enum.IntEnum):
    """The first item of every record array."""

    REQUEST = 1
    REPLY = 2
    IOCTL = 3
    EVENT = 4


#: The kinds as plain ints, for the loops that compare millions of them.
REQUEST, REPLY, IOCTL, EVENT = (int(k) for k in Kind)

#: An IOCTL record's map, in the order `TraceWriter.ioctl` writes it; the C trap writes the
#: same bytes (through `traces/facts.h`).
IOCTL_KEYS = ("cmd", "arg", "result", "errno", "tid", "pid", "fd", "path", "out")


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


U32, U64, I64 = (0, 1 << 32), (0, 1 << 64), (-(1 << 63), 1 << 63)
_ERRNO = (0, 4096)  # what the kernel's -errno fits in (MAX_ERRNO)
_FD = (-(1 << 31), 1 << 31)


def is_int(value: Any, span: tuple[int, int]) -> bool:
    return type(value) is int and span[0] <= value < span[1]


def str_list(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _int_list(value: Any) -> bool:
    return type(value) is list and all(is_int(v, U32) for v in value)


_NIL = type(None)
#: meta key → (the types it may have, the span an int must lie in or None, what it must
#: be): one type per key whatever the record kind
_SPECS: dict[str, tuple[tuple[type, ...], tuple[int, int] | None, str]] = {
    "event": ((str,), None, "a string"),
    "cmd": ((int,), U32, "a 32-bit ioctl number"),
    "arg": ((bytes,), None, "bytes"),
    "out": ((_NIL, bytes), None, "bytes or nil"),
    "result": ((int,), I64, "a 64-bit integer"),
    "errno": ((int,), _ERRNO, "an errno (0-4095)"),
    "write_errno": ((int,), _ERRNO, "an errno (0-4095)"),
    "tid": ((int,), U32, "a thread id"),
    "pid": ((int,), U32, "a process id"),
    "fd": ((_NIL, int), _FD, "a file descriptor or nil"),
    "path": ((_NIL, str), None, "a string or nil"),
    "len": ((int,), U32, "a 32-bit length"),
    "server_ns": ((int,), U64, "nanoseconds"),
    "original": ((bytes,), None, "bytes"),
    "reason": ((str,), None, "a string"),
    "unique": ((int,), U64, "a 64-bit unique"),
    "opcode": ((_NIL, int), U32, "an opcode or nil"),
    "connection_gone": ((bool,), None, "true or false"),
}


def _check(types: tuple[type, ...], span: tuple[int, int] | None) -> Callable[[Any], bool]:
    if span is None:
        return lambda v: type(v) in types
    lo, hi = span
    return lambda v: type(v) in types and (type(v) is not int or lo <= v < hi)


#: meta key → (check, what it must be)
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (_check(types, span), what) for key, (types, span, what) in _SPECS.items()},
    "fragments": (_int_list, "a list of lengths"),
}
#: the same, unpacked for `_meta_problem`'s loop and `_scan.c`'s: key → (types, lowest,
#: past the highest int)
QUICK_RULES = {key: (types, *(span or (0, 0))) for key, (types, span, _) in _SPECS.items()}

_PLAIN = (type(None), bool, int, float, str, bytes)


def _plain(value: Any, depth: int = 0) -> bool:
    """Plain msgpack data (no extension types), nested at most MAX_DEPTH deep."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(_plain(v, depth + 1) for v in value.values())  # keys: str or bytes
    return False


def fields_problem(name: str, meta: dict[Any, Any],
                   rules: dict[str, tuple[Callable[[Any], bool], str]] = FIELDS) -> str | None:
    """Why a map's values break `rules` (or are not plain data), or None."""
    for key, value in meta.items():  # keys are str or bytes (msgpack's strict_map_key)
        rule = rules.get(key)
        if rule is not None:
            if not rule[0](value):
                return f"{name} {key} must be {rule[1]}, found {_short(value)}"
        elif not _plain(value):
            return f"{name} {key} is not plain data (or nested over {MAX_DEPTH} deep)"
    return None


def _meta_problem(name: str, meta: dict[Any, Any]) -> str | None:
    """`fields_problem(name, meta)`, quicker for the common keys and values: the first one
    it is not sure of sends the whole map to `fields_problem`."""
    quick, plain = QUICK_RULES, _PLAIN
    for key, value in meta.items():
        spec = quick.get(key)
        kind = type(value)
        if spec is not None:
            if kind in spec[0] and (kind is not int or spec[1] <= value < spec[2]):
                continue
        elif kind in plain and key not in FIELDS:
            continue
        return fields_problem(name, meta)
    return None


def problem(obj: Any) -> str | None:
    """Why a decoded msgpack object is not a valid record, or None when it is."""
    if type(obj) is not list:
        return f"expected a record array, found {type(obj).__name__} {_short(obj)}"
    n = len(obj)
    if n != 3 and n != 4:
        return f"record array of {n} items"
    kind, ts = obj[0], obj[1]
    if type(kind) is not int or not REQUEST <= kind <= EVENT:
        return f"unknown record kind {_short(kind)}"
    if type(ts) is not int or not 0 <= ts < TS_LIMIT:
        return f"bad timestamp {_short(ts)}"
    name = _KINDS[kind].name
    if kind <= REPLY:
        raw = obj[2]
        if type(raw) is not bytes:
            return f"{name} without message bytes"
        if n == 3:
            return None
        meta = obj[3]
        if type(meta) is not dict:
            return f"{name} meta is not a map"
        if "len" in meta and is_int(meta["len"], U32) and meta["len"] < len(raw):
            return f"{name} len {meta['len']} is shorter than the {len(raw)} bytes kept"
        return _meta_problem(name, meta)
    meta = obj[2]
    if n != 3 or type(meta) is not dict:
        return f"{name} record without its map"
    if kind == IOCTL and "cmd" not in meta:
        return "IOCTL record without a command number"
    if kind == EVENT and "event" not in meta:
        return "EVENT record without a name"
    return _meta_problem(name, meta)


_KINDS = (None, *Kind)


def decode(obj: Any, index: int, offset: int) -> Record:
    """A `Record` from an object `problem()` accepted."""
    kind = _KINDS[obj[0]]
    if kind <= REPLY:
        return Record(index, offset, kind, obj[1], obj[2], obj[3] if len(obj) == 4 else {})
    return Record(index, offset, kind, obj[1], None, obj[2])


def cut_note(offset: int, good_records: int, detail: str) -> str:
    """The `.tail` message of readers and the index."""
    return f"trace cut at byte {offset} after {good_records} good records: {detail}"
