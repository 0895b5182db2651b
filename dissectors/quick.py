"""Struct-only decoding for list views: millions of messages without building Scapy packets.

Each Scapy struct class compiles once into a `struct.Struct` (nested structs flattened as
`attr.size`), and messages are walked with the same plans `layouts.py` gives the Scapy
decoder, so both paths agree by construction. Only fixed structs, names, data lengths and
list counts are read; `Brief.text()` formats a field only when it is shown.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from .constants import NotifyCode, Opcode
from .context import DEFAULT_CONTEXT, FuseContext
from .flat import Compiled, compiled, fixed_head
from .layouts import fixed_size_before, notify_plan, reply_plan, request_plan
from .offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, reader
from .structs import (
    FuseData,
    FuseDirent,
    FuseDirentList,
    FuseDirentplusList,
    FuseEntryOut,
    FuseInHeader,
    FuseName,
    FuseNames,
    FuseOutHeader,
    FuseStruct,
    dirent_size,
    struct_name,
)

__all__ = ["Brief", "Compiled", "brief_reply", "brief_request", "compiled", "data_offset",
           "peek_reply", "peek_request", "snap"]

_IN = reader(FuseInHeader, "len", "opcode", "unique", "nodeid", "pid", "total_extlen")
_OUT = reader(FuseOutHeader, "len", "error", "unique")
_IN_PEEK = reader(FuseInHeader, "opcode", "unique", "nodeid")  # what indexes need, nothing more
_OUT_PEEK = reader(FuseOutHeader, "error", "unique")
_DIRENT_SIZE = fixed_head(FuseDirent).st.size
_DIRENT_NAMELEN = reader(FuseDirent, "namelen")
_ENTRY_OUT_SIZE = compiled(FuseEntryOut).st.size


class Brief:
    """What one message says at a glance: header fields and the body's fixed structs."""

    __slots__ = ("direction", "length", "unique", "opcode", "nodeid", "error", "pid",
                 "layers", "extras", "reason")

    def __init__(self, direction: str, length: int, unique: int, opcode: int | None = None,
                 nodeid: int = 0, error: int = 0, pid: int = 0, reason: str = "") -> None:
        self.direction = direction  # "request", "reply" or "notify"
        self.length = length  # the header's len (the true size, even when the trace cut it)
        self.unique = unique
        self.opcode = opcode  # for replies, the opcode of the request answered
        self.nodeid = nodeid
        self.error = error  # replies: negated errno; notifications: the notify code
        self.pid = pid
        self.layers: list[tuple[Compiled, tuple[Any, ...]]] = []
        self.extras: dict[str, Any] = {}
        self.reason = reason  # why (part of) the body was left raw

    def __repr__(self) -> str:
        return f"Brief({self.direction} opcode={self.opcode} unique={self.unique} reason={self.reason!r})"

    def get(self, name: str, default: Any = None) -> Any:
        for comp, values in self.layers:
            i = comp.index.get(name)
            if i is not None:
                return values[i]
        return self.extras.get(name, default)

    def text(self, name: str) -> str | None:
        for comp, values in self.layers:
            i = comp.index.get(name)
            if i is not None:
                fmt = comp.formatters[i]
                return fmt(values[i]) if fmt else str(values[i])
        value = self.extras.get(name)
        if value is None:
            return None
        return repr(value.decode("utf-8", "backslashreplace")) if isinstance(value, bytes) else str(value)


#: Steps a plan compiles to, so walking a message does no class tests (`steps`); the
#: one-line fast path of `summary.py` walks the same steps.
STRUCT, NAMES, _DATA, _DIRENTS, _CALL, _STOP = range(6)


@lru_cache(maxsize=None)
def steps(plan: tuple[Any, ...]) -> tuple[tuple[Any, ...], ...]:
    steps: list[tuple[Any, ...]] = []
    for entry in plan:
        if not isinstance(entry, type):
            steps.append((_CALL, entry))
        elif issubclass(entry, FuseStruct):
            steps.append((STRUCT, compiled(entry), struct_name(entry)))
        elif entry is FuseName or entry is FuseNames:
            keys = ("name",) if entry is FuseName else ("name", "name2")
            steps.append((NAMES, keys, struct_name(entry)))
        elif entry is FuseData:
            steps.append((_DATA,))
        elif entry is FuseDirentList or entry is FuseDirentplusList:
            steps.append((_DIRENTS, entry is FuseDirentplusList))
        else:
            steps.append((_STOP,))
    return tuple(steps)


def _walk(brief: Brief, plan: list[Any], raw: bytes, start: int, end: int, header: str) -> None:
    """Read the plan's fixed structs and cheap facts of its variable parts from raw[start:end]."""
    off, prev = start, header
    for step in steps(tuple(plan)):
        kind = step[0]
        if kind == _CALL and brief.layers:
            # A plan function of the previous layer (IOCTL reply: iovecs or data by flags).
            comp, values = brief.layers[-1]
            entry = step[1](SimpleNamespace(**dict(zip(comp.names, values))), raw[off:end])
            step = steps((entry,))[0] if isinstance(entry, type) else (_STOP,)
            kind = step[0]
        if kind == STRUCT:
            comp = step[1]
            brief.layers.append((comp, comp.st.unpack_from(raw, off)))
            off += comp.st.size
            prev = step[2]
        elif kind == NAMES:
            for key in step[1]:
                nul = raw.find(b"\0", off, end)
                if nul < 0:
                    brief.extras[key] = raw[off:end]
                    brief.reason = brief.reason or f"{key} without its NUL terminator"
                    return
                brief.extras[key] = raw[off:nul]
                off = nul + 1
            prev = step[2]
        elif kind == _DATA:
            brief.extras["data_len"] = end - off
            return
        elif kind == _DIRENTS:
            plus = step[1]
            brief.extras["entries"], left = _count_dirents(raw, off, end, plus)
            if left:  # the same words as the Scapy list's note
                what = "fuse_direntplus" if plus else "fuse_dirent"
                brief.reason = brief.reason or f"{left} bytes of an incomplete {what}"
            return
        else:
            return
    if off < end:  # the same words as the Scapy decoder's raw layer
        brief.reason = brief.reason or f"{end - off} unexpected bytes after {prev}"


def _count_dirents(raw: bytes, off: int, end: int, plus: bool) -> tuple[int, int]:
    """(complete entries, bytes left over after them)."""
    count, skip = 0, _ENTRY_OUT_SIZE if plus else 0
    while off + skip + _DIRENT_SIZE <= end:
        namelen = _DIRENT_NAMELEN.unpack_from(raw, off + skip)[0]
        stop = off + skip + dirent_size(namelen)
        if stop > end:
            break
        off, count = stop, count + 1
    return count, end - off


def brief_request(raw: bytes, ctx: FuseContext = DEFAULT_CONTEXT) -> Brief:
    if len(raw) < IN_HEADER_SIZE:
        return Brief("request", len(raw), 0, reason=f"short fuse_in_header: {len(raw)} bytes")
    length, opcode, unique, nodeid, pid, extlen = _IN.unpack_from(raw)
    brief = Brief("request", length, unique, opcode, nodeid, pid=pid)
    end = min(length, len(raw))
    body = memoryview(raw)[IN_HEADER_SIZE:end]
    plan, reason = request_plan(ctx, opcode, extlen, body)
    brief.reason = reason
    if not reason:
        _walk(brief, plan, raw, IN_HEADER_SIZE, max(end, IN_HEADER_SIZE), "fuse_in_header")
    return brief


def brief_reply(raw: bytes, ctx: FuseContext = DEFAULT_CONTEXT) -> Brief:
    if len(raw) < OUT_HEADER_SIZE:
        return Brief("reply", len(raw), 0, reason=f"short fuse_out_header: {len(raw)} bytes")
    length, error, unique = _OUT.unpack_from(raw)
    end = min(length, len(raw))
    body = memoryview(raw)[OUT_HEADER_SIZE:end]
    if unique == 0:
        brief = Brief("notify", length, 0, error=error)
        plan, reason = notify_plan(error, body)
    else:
        brief = Brief("reply", length, unique, ctx.opcode, error=error)
        plan, reason = reply_plan(ctx, error, body)
    brief.reason = reason
    if not reason:
        _walk(brief, plan, raw, OUT_HEADER_SIZE, max(end, OUT_HEADER_SIZE), "fuse_out_header")
    return brief


def peek_request(raw: bytes) -> tuple[int, int, int]:
    """(opcode, unique, nodeid) of a request, or zeros when the header is cut."""
    if len(raw) < IN_HEADER_SIZE:
        return 0, 0, 0
    return _IN_PEEK.unpack_from(raw)


def peek_reply(raw: bytes) -> tuple[int, int]:
    """(error, unique) of a reply or notification (unique 0, error = notify code)."""
    if len(raw) < OUT_HEADER_SIZE:
        return 0, 0
    return _OUT_PEEK.unpack_from(raw)


#: Requests and replies whose tail is file data, and where that data starts (after the
#: fixed structs their plans put before it, at the current protocol).
DATA_REQUESTS = {op: IN_HEADER_SIZE + fixed_size_before(FuseData, "request", op)
                 for op in (Opcode.WRITE, Opcode.NOTIFY_REPLY)}
DATA_REPLIES = {op: OUT_HEADER_SIZE + fixed_size_before(FuseData, "reply", op)
                for op in (Opcode.READ,)}
DATA_NOTIFY = {code: OUT_HEADER_SIZE + fixed_size_before(FuseData, "notify", code)
               for code in (NotifyCode.STORE,)}


def data_offset(raw: bytes, is_request: bool, opcode: int | None) -> int | None:
    """Where file data begins in a message, for the snap length to cut; None if it has none.

    Replies need the opcode of the request they answer; notifications are recognised by
    their zero `unique`.
    """
    if is_request:
        op = peek_request(raw)[0]
        return DATA_REQUESTS.get(op)
    error, unique = peek_reply(raw)
    if unique == 0:
        return DATA_NOTIFY.get(error)
    return DATA_REPLIES.get(opcode) if opcode is not None and error == 0 else None


def snap(raw: bytes, is_request: bool, opcode: int | None, snaplen: int) -> tuple[bytes, int | None]:
    """Cut a message's file data to `snaplen` bytes, like tcpdump -s: (kept bytes, true
    length or None when nothing was cut). Headers and structs are always kept whole;
    `snaplen` 0 keeps everything."""
    if not snaplen:
        return raw, None
    start = data_offset(raw, is_request, opcode)
    if start is None or len(raw) <= start + snaplen:
        return raw, None
    return raw[:start + snaplen], len(raw)
