"""The trace as a book of answers: recorded request/reply pairs, found by request key.

Which recorded reply answers a live request (the rule `fusetrace serve` documents):
1. Candidates are the recorded requests with an equal key (`keys.py`: opcode, node id,
   arguments; never `unique`), in recorded order.
2. Each recorded reply is used once: the first unused candidate answers.
3. When every candidate is used (the kernel asked again: an attribute or entry timeout
   ran out, a page was dropped from the cache), the latest used one answers again: a
   *repeat*.
4. A repeat also wins over the next unused candidate when the trace recorded a change
   (a successful CREATE, WRITE, SETATTR, RENAME … anywhere in the filesystem) between
   the two that the live session has not made yet: asking again before the change must
   not get the answer recorded after it.

Node ids and file handles need no translation: the kernel learns them from the recorded
replies this book hands out, so it sends back the recorded values.

Passthrough opens (FOPEN_PASSTHROUGH, or Android's passthrough_fh) are stored without
passthrough: the served mount has no backing files. Their READs and WRITEs never reached
the recorded server, so the book has no answer for them; `passthrough_fhs` lets the
report say so.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any

from dissectors import SessionDecoder
from dissectors.constants import FOPEN_PASSTHROUGH, NO_REPLY_OPCODES, Opcode
from dissectors.context import FuseContext
from dissectors.offsets import reader
from dissectors.opcodes import CHANGES, CONNECTION, FILE_OPENS
from dissectors.quick import Brief
from dissectors.session import decode_reply
from dissectors.structs import FuseOpenOut, FuseOpenOutAndroid, FuseOutHeader
from traces import TraceReader

from .keys import Fields, Key, differences, key_of, request_fields

#: Requests the book never answers: no reply is due, or the server owns them.
NOT_MATCHED = NO_REPLY_OPCODES | CONNECTION | {Opcode.INTERRUPT}
_ERROR = reader(FuseOutHeader, "error")


class BadTrace(ValueError):
    """The trace cannot be served; the message says why, in one line."""


@dataclass
class Exchange:
    """One recorded request and the reply to hand out for it."""

    index: int  # record number of the request in the trace (`fusetrace show -r`)
    opcode: int
    fields: Fields
    brief: Brief
    reply: bytes  # as recorded, passthrough stripped
    cut: bool = False  # the reply's file data was cut by the snap length
    used: bool = False


@dataclass
class Closest:
    """The recorded request most like an unmatched one, and how they differ."""

    exchange: Exchange
    differs: list[str]


@dataclass
class ReplyBook:
    path: str
    header: dict[str, Any]
    snaplen: int
    init_request: Brief
    init_reply: bytes
    init_ctx: FuseContext  # what the recorded INIT negotiated
    exchanges: list[Exchange] = field(default_factory=list)
    passthrough_fhs: set[int] = field(default_factory=set)
    mount: dict[str, Any] | None = None  # the recorded `mount` event: the mount as made
    _by_key: dict[Key, list[int]] = field(default_factory=dict)
    _taken: dict[Key, int] = field(default_factory=dict)  # candidates used, per key
    _changes: list[int] = field(default_factory=list)  # unused changes, sorted

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReplyBook:
        """Read and pair a whole trace. Raises TraceReadError or BadTrace."""
        return _Loader(os.fspath(path)).load()

    def add(self, ex: Exchange) -> None:
        pos = len(self.exchanges)
        self.exchanges.append(ex)
        self._by_key.setdefault(key_of(ex.opcode, ex.fields), []).append(pos)
        if ex.opcode in CHANGES and _error(ex.reply) == 0:
            self._changes.append(pos)

    def take(self, key: Key) -> tuple[Exchange, bool] | None:
        """The exchange answering `key` and whether it is a repeat; None when the trace
        has no such request."""
        candidates = self._by_key.get(key)
        if not candidates:
            return None
        taken = self._taken.get(key, 0)
        last = candidates[taken - 1] if taken else None
        if taken < len(candidates):
            nxt = candidates[taken]
            if last is None or not self._change_between(last, nxt):
                self._taken[key] = taken + 1
                self._use(nxt)
                return self.exchanges[nxt], False
        assert last is not None
        return self.exchanges[last], True

    def _change_between(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self._changes, a)
        return i < len(self._changes) and self._changes[i] < b

    def _use(self, pos: int) -> None:
        ex = self.exchanges[pos]
        ex.used = True
        if ex.opcode in CHANGES:
            i = bisect.bisect_left(self._changes, pos)
            if i < len(self._changes) and self._changes[i] == pos:
                del self._changes[i]

    def closest(self, opcode: int, fields: Fields) -> Closest | None:
        """The recorded request of the same opcode with the fewest differing fields
        (earliest on a tie), or None when the trace has none of that opcode."""
        best: tuple[int, int] | None = None
        for key, positions in self._by_key.items():
            if key[0] != opcode:
                continue
            pos = positions[0]
            score = len(differences(fields, self.exchanges[pos].fields))
            if best is None or (score, pos) < best:
                best = (score, pos)
        if best is None:
            return None
        ex = self.exchanges[best[1]]
        return Closest(ex, differences(fields, ex.fields))

    @property
    def unused(self) -> int:
        return sum(not ex.used for ex in self.exchanges)


def _error(reply: bytes) -> int:
    return _ERROR.unpack_from(reply)[0] if len(reply) >= _ERROR.size else 0


class _Loader:
    """One pass over the trace: pair requests and replies by `unique`, in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.decoder = SessionDecoder()
        self.pending: dict[int, tuple[int, bytes, Brief]] = {}
        self.init: tuple[Brief, bytes, FuseContext] | None = None
        self.exchanges: list[Exchange] = []
        self.passthrough_fhs: set[int] = set()
        self.mount: dict[str, Any] | None = None

    def load(self) -> ReplyBook:
        with TraceReader(self.path) as reader:
            snaplen = reader.header.get("snaplen")
            snaplen = snaplen if type(snaplen) is int and snaplen > 0 else 0
            for rec in reader:
                if rec.raw is None:
                    if self.mount is None and rec.event == "mount":
                        self.mount = rec.meta
                    continue
                if rec.is_request:
                    self._request(rec.index, rec.raw)
                else:
                    self._reply(rec.raw, rec.truncated, snaplen)
            if reader.tail:
                raise BadTrace(f"{self.path}: {reader.tail}; a cut trace could answer "
                               "wrongly, so it is not served")
            header = reader.header
        if self.init is None:
            raise BadTrace(f"{self.path}: no answered INIT in this trace, nothing to serve "
                           "(was the session recorded from its start?)")
        init_request, init_reply, ctx = self.init
        book = ReplyBook(self.path, header, snaplen, init_request, init_reply, ctx,
                         passthrough_fhs=self.passthrough_fhs, mount=self.mount)
        for ex in sorted(self.exchanges, key=lambda e: e.index):  # the order asked
            book.add(ex)
        return book

    def _request(self, index: int, raw: bytes) -> None:
        msg = self.decoder.feed_request(raw)
        brief = msg.brief
        if brief.opcode is not None and brief.unique and brief.opcode not in NO_REPLY_OPCODES:
            self.pending[brief.unique] = (index, raw, brief)

    def _reply(self, raw: bytes, cut: bool, snaplen: int) -> None:
        msg = self.decoder.feed_reply(raw)
        found = self.pending.pop(msg.brief.unique, None) if msg.brief.unique else None
        if found is None:
            return  # a notification, or a reply to a request the trace does not hold
        index, req_raw, req = found
        opcode = req.opcode or 0
        if opcode == Opcode.INIT:
            if self.init is None and not msg.brief.error and not msg.brief.reason:
                self.init = (req, raw, self.decoder.ctx)
            return
        if opcode in NOT_MATCHED:
            return
        if opcode in FILE_OPENS and not msg.brief.error:
            raw = self._without_passthrough(raw, msg.brief, msg.ctx)
        fields = request_fields(req, req_raw, snaplen)
        self.exchanges.append(Exchange(index, opcode, fields, req, raw, cut))

    def _without_passthrough(self, raw: bytes, brief: Brief, ctx: FuseContext) -> bytes:
        flags = brief.get("open_flags") or 0
        if not flags & FOPEN_PASSTHROUGH and not brief.get("passthrough_fh"):
            return raw
        self.passthrough_fhs.add(brief.get("fh"))
        pkt = decode_reply(raw, ctx)
        for cls, name in ((FuseOpenOut, "backing_id"), (FuseOpenOutAndroid, "passthrough_fh")):
            if pkt.haslayer(cls):
                out = pkt[cls]
                out.open_flags &= ~FOPEN_PASSTHROUGH
                setattr(out, name, 0)
                return bytes(pkt)
        raise BadTrace(f"{self.path}: an open reply with passthrough that does not decode "
                       "as fuse_open_out")
