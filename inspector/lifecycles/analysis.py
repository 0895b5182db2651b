"""One pass over a trace: every backing id, file handle and node id with its lifecycle,
the pairing of requests and replies, and the anomalies of all of them.

The pass reads records in order and only the words it needs (`wire`); INIT goes through a
`SessionDecoder`, which knows the negotiated minor, flags and passthrough dialect. What is
still open when the trace ends is judged by how the session ended: after a clean unmount a
backing id still open is a leak and an unanswered request a bug, while a node id still
looked up was released by the unmount (the kernel drops node references with the
connection and sends no FORGET); a trace cut short or a session that ended by a crash only
says what was open at its end.

Most records only pair a request with its reply or add a step to an id already followed;
when the extension is built, `_pass.c` takes those (four in five of a typical trace) on
these very tables and hands every other record to `_Pass`'s methods, so both ways give the
same result (tests/inspector/test_lifecycles_fast.py).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, Callable, NamedTuple

from dissectors import SessionDecoder
from dissectors.constants import (
    FOPEN_DIRECT_IO,
    FOPEN_PASSTHROUGH,
    FUSE_PASSTHROUGH,
    FUSE_ROOT_ID,
    FUSE_UNIQUE_RESEND,
    FUSE_WRITEBACK_CACHE,
    INIT_FLAGS,
    Opcode,
)
from dissectors.context import Dialect
from dissectors.fields import errno_name, flags_repr
from dissectors.ioctls import DevIoctl
from dissectors.offsets import reader
from dissectors.opcodes import (DIR_HANDLE_OPS, ENTRY_REPLIES, FORGETS, OPEN_REPLIES, RELEASES,
                                UNPAIRED)
from dissectors.structs import FuseInHeader, FuseOutHeader
from dissectors.summary import opcode_name as _op
from traces import Kind, TraceIndex, TraceReader
from traces.stream import gc_paused

from . import wire
from .kinds import severity
from .model import (CLOSED, LEAKED, MISUSED, OPEN_AT_END, RELEASED_AT_UNMOUNT, Anomaly,
                    LifeEvent, Lifecycle, new_event as _new_event)

try:  # the common records in C when the extension is built (setup.py), else all in Python
    from ._pass import run as fast_run
except ImportError:
    fast_run = None

Progress = Callable[[int, int], None]

#: Requests that name no id the pass follows: only their pairing with a reply matters.
_FH_NAMED = frozenset(wire.FH_SLOTS)  # requests that may name a handle (see dissectors.ids)
_PLAIN = (frozenset(Opcode) - ENTRY_REPLIES - OPEN_REPLIES - DIR_HANDLE_OPS - RELEASES - UNPAIRED
          - {Opcode.INIT} - _FH_NAMED)
_MAKES_IDS = ENTRY_REPLIES | OPEN_REPLIES | {Opcode.READDIRPLUS}  # replies that hand out ids
#: GETATTR's handle: (where it ends, where its flag word is, that word's struct, the bit)
_GETATTR_FH = next((at + st.size, flag_at, flag, bit)
                   for at, st, (flag_at, flag, bit) in wire.FH_SLOTS[Opcode.GETATTR])


def _getattr_fh(raw: bytes) -> bool:
    """Does this GETATTR name a file handle (FUSE_GETATTR_FH in getattr_flags)?"""
    end, flag_at, flag, bit = _GETATTR_FH
    return len(raw) >= end and bool(flag.unpack_from(raw, flag_at)[0] & bit)


#: Requests that use one handle, named first in their body → is it a directory handle?
_FH_USES = {op: op in DIR_HANDLE_OPS for op in wire.FH_FIRST - RELEASES
            if len(wire.FH_SLOTS[op]) == 1}  # not COPY_FILE_RANGE's two
_IN_PEEK = reader(FuseInHeader, "opcode", "unique", "nodeid")
_OUT_PEEK = reader(FuseOutHeader, "error", "unique")
_ANDROID_OPENS = frozenset({DevIoctl.PASSTHROUGH_OPEN_V1, DevIoctl.PASSTHROUGH_OPEN_V2})
#: errnos by which a kernel says it has no passthrough at all (not the server's doing)
_UNSUPPORTED = {
    errno.ENOTTY: ("backing-unsupported", "failed with ENOTTY: this kernel has no "
                   "FUSE_DEV_IOC_BACKING_OPEN (older than 6.9): passthrough is not available"),
    errno.EOPNOTSUPP: ("backing-unsupported", "failed with EOPNOTSUPP: this kernel was built "
                       "without CONFIG_FUSE_PASSTHROUGH"),
}
_RECENT = 4096

#: What `_pass.c` may take by itself. Requests, by opcode: left to Python, paired only,
#: paired unless the GETATTR names a handle, a use of a file (directory) handle named first
#: in the body, paired keeping the request (for the name an entry reply labels its node
#: with). Replies, by their request's opcode: left to Python, paired only, an entry reply,
#: paired only when it is an error.
_R_PY, _R_PAIR, _R_COND, _R_FH_FILE, _R_FH_DIR, _R_NAMED = range(6)
_P_PY, _P_PAIR, _P_ENTRY, _P_IF_ERROR = range(4)


def _request_class(op: int) -> int:
    """What `_Pass.request` does with this opcode, when it is as plain as `_pass.c` needs."""
    if op in _PLAIN:
        return _R_PAIR
    if op == Opcode.GETATTR:
        return _R_COND
    if op in _FH_USES:
        return _R_FH_DIR if _FH_USES[op] else _R_FH_FILE
    if op in UNPAIRED or op in _FH_NAMED or op == Opcode.INIT:
        return _R_PY
    return _R_NAMED if op in ENTRY_REPLIES else _R_PAIR  # opens, unknown opcodes


def _reply_class(op: int) -> int:
    if op == Opcode.INIT:
        return _P_PY
    if op not in _MAKES_IDS:
        return _P_PAIR
    return _P_ENTRY if op in ENTRY_REPLIES and op not in OPEN_REPLIES else _P_IF_ERROR


_OPCODES = range(max(Opcode) + 1)
#: (classes of requests, of replies, event names of requests, of replies, GETATTR's
#: condition); `_pass.c` reads headers at the offsets of traces/facts.h
_FAST_TABLES = (
    bytes(_request_class(op) for op in _OPCODES), bytes(_reply_class(op) for op in _OPCODES),
    tuple(_op(op) for op in _OPCODES), tuple(f"{_op(op)} reply" for op in _OPCODES),
    {Opcode.GETATTR: (_GETATTR_FH[0], _GETATTR_FH[1], _GETATTR_FH[2].size, _GETATTR_FH[3])})




def _rejection_cause(err: int, interrupt: int | None) -> str:
    if err == errno.ENOENT:
        return (f"the request had been interrupted (#{interrupt})" if interrupt is not None
                else "the kernel no longer waited for it (interrupted or aborted)")
    return "the reply is malformed for that request" if err == errno.EINVAL else "see the errno"


class _Asked(NamedTuple):
    """A request waiting for its reply (a tuple: the pass makes one per request)."""

    index: int
    ts: int
    opcode: int
    nodeid: int
    raw: bytes = b""  # the request, for the name of a LOOKUP/MKDIR/CREATE/... (read lazily)


#: A tuple constructor without the named tuple's Python-level __new__ (see `new_event`).
_new_asked = partial(tuple.__new__, _Asked)


@dataclass(slots=True)
class _Open:
    """One open a file handle stands for: the inode and the backing id it carries."""

    nodeid: int
    backing: Lifecycle | None
    reply: int  # record number of the open reply
    seen: bool = False  # the kernel has used the handle since (its open completed)


class Analysis:
    """Everything one pass found; see `inspector.lifecycles` for the model."""

    def __init__(self, path: str, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.tail: str | None = None
        self.ended = False  # the trace holds the session's end
        self.end_reason: str | None = None
        self.end_at: tuple[int, int] | None = None  # (record, ts) of the session's end
        self.records = 0
        self.anomalies: list[Anomaly] = []
        self.dialect = Dialect.NONE
        self.init: dict[str, Any] = {}  # negotiated facts, for stats and the TUI
        self._all: dict[str, dict[int, list[Lifecycle]]] = {"backing": {}, "fh": {}, "node": {}}
        self._subjects: dict[int, list[tuple[str, int]]] | None = None
        self._index: TraceIndex | None = None
        self._owns_index = True

    # --- questions --------------------------------------------------------------------

    @property
    def clean_end(self) -> bool:
        """The session ended by an unmount, so whatever is still open was forgotten."""
        return self.ended and self.end_reason == "unmounted"

    def lifecycles(self, kind: str) -> list[Lifecycle]:
        """Every lifecycle of `kind` ("backing", "fh", "node"), in order of first record."""
        found = [lc for gens in self._all[kind].values() for lc in gens]
        found.sort(key=lambda lc: lc.events[0].index if lc.events else -1)
        return found

    def find(self, kind: str, key: int) -> list[Lifecycle]:
        """All generations of one id; "request" lifecycles are built on demand."""
        if kind == "request":
            lc = self._request(key)
            return [lc] if lc is not None else []
        return list(self._all[kind].get(key, ()))

    def subjects_of(self, index: int) -> list[tuple[str, int]]:
        """The ids record `index` belongs to: backing id, fh, node, then its request."""
        if self._subjects is None:
            subjects: dict[int, list[tuple[str, int]]] = {}
            for kind in ("backing", "fh", "node"):
                for gens in self._all[kind].values():
                    for lc in gens:
                        for e in lc.events:
                            found = subjects.setdefault(e.index, [])
                            if (kind, lc.key) not in found:
                                found.append((kind, lc.key))
            self._subjects = subjects
        found = list(self._subjects.get(index, ()))
        idx = self.index()
        if 0 <= index < len(idx) and idx.kind(index) in (Kind.REQUEST, Kind.REPLY):
            unique = idx.unique(index)
            if unique:
                found.append(("request", unique))
        return found

    def index(self) -> TraceIndex:
        """The trace's index (opened on first use, from its cache when valid)."""
        if self._index is None:
            self._index = TraceIndex.open(self.path)
        return self._index

    def close(self) -> None:
        """Close the index this analysis opened (one it was given stays open)."""
        if self._index is not None and self._owns_index:
            self._index.close()
        self._index = None

    def _request(self, unique: int) -> Lifecycle | None:
        """The request `unique`: the request, any INTERRUPT of it, and its reply."""
        idx = self.index()
        uniques, kinds = idx.column("unique"), idx.column("kind")
        lc: Lifecycle | None = None
        asked_ts = 0
        for i, u in enumerate(uniques):
            if u != unique or kinds[i] > Kind.REPLY:
                continue
            if kinds[i] == Kind.REQUEST:
                if lc is None:
                    lc = Lifecycle("request", unique, label=_op(idx.opcode(i)), state="unanswered")
                    asked_ts = idx.ts(i)
                    lc.add(i, asked_ts, _op(idx.opcode(i)), f"nodeid={idx.nodeid(i)}")
            elif lc is not None:
                err = idx.error(i)
                lat = (idx.ts(i) - asked_ts) / 1e6
                lc.add(i, idx.ts(i), "reply", f"{'error=' + errno_name(err) + ' ' if err else ''}"
                                              f"after {lat:.3f} ms")
                lc.state, lc.verdict = "answered", CLOSED
        if lc is None:
            return None
        opcodes = idx.column("opcode")
        for i, op in enumerate(opcodes):
            if op == Opcode.INTERRUPT and kinds[i] == Kind.REQUEST:
                raw = idx.record(i).raw or b""
                if wire.interrupted_unique(raw) == unique:
                    lc.add(i, idx.ts(i), "INTERRUPT", f"unique={idx.unique(i)}")
        lc.events.sort(key=lambda e: e.index)
        if lc.state == "unanswered":
            if idx.opcode(lc.events[0].index) in UNPAIRED:
                lc.state, lc.verdict = "no reply expected", CLOSED
            elif any(e.what == "INTERRUPT" for e in lc.events):
                lc.state = "interrupted"
        return lc


def analyse(source: str | os.PathLike[str] | TraceIndex, progress: Progress | None = None) -> Analysis:
    """Read the whole trace once; progress(bytes done, bytes total) now and then.

    Raises `TraceReadError` when the trace cannot be opened at all; a cut or corrupt tail
    ends the pass, and `Analysis.tail` says where.
    """
    path = os.fspath(source.path if isinstance(source, TraceIndex) else source)
    with TraceReader(path) as reader:
        result = Analysis(path, reader.header)
        if isinstance(source, TraceIndex):
            result._index, result._owns_index = source, False
        walker = _Pass(result)
        record, records = walker.record, reader.arrays(progress)
        with gc_paused():
            if fast_run is None:
                for i, obj in enumerate(records):
                    record(i, obj)
            else:  # C takes the common records and hands each other one to Python
                handlers = (record, walker.request, walker.reply, walker.other)
                fast_run(walker.fast_state(), records, handlers, walker)
        result.tail = reader.tail
        result.records = reader.good_records
        walker.finish()
    return result


class _Pass:
    """The state of the connection while the records go by."""

    def __init__(self, result: Analysis) -> None:
        self.out = result
        self.dec = SessionDecoder()
        self.asked: dict[int, _Asked] = {}
        self.interrupted: dict[int, int] = {}  # unique → record number of its INTERRUPT
        #: unique → (reply record, request, reply bytes, INTERRUPT record) of the latest
        #: replies, for a `reply_rejected` event that follows its reply closely
        self.recent: dict[int, tuple[int, _Asked, bytes, int | None]] = {}
        self.highest = 0  # the highest unique the kernel sent so far
        self.init_request: int | None = None
        self.init_reply: int | None = None
        self.kernel_flags: int | None = None
        self.passthrough = False  # negotiated and left on by the kernel
        self.passthrough_off: tuple[str, str] | None = None  # (anomaly code, why)
        self.backing: dict[int, Lifecycle] = {}  # open backing ids
        self.fhs: dict[tuple[bool, int], Lifecycle] = {}  # (directory?, fh) → open handle
        self.opens: dict[tuple[bool, int], list[_Open]] = {}
        self.unseen: set[tuple[bool, int]] = set()  # handles with passthrough opens not yet used
        self.nodes: dict[int, Lifecycle] = {}  # looked-up nodes
        self.inode_backing: dict[int, tuple[Lifecycle, int]] = {}  # nodeid → (backing, opens)

    # --- helpers ----------------------------------------------------------------------

    def flag(self, code: str, message: str, records: list[int] | tuple[int, ...],
             subject: Lifecycle | None = None, verdict: str | None = MISUSED) -> None:
        anomaly = Anomaly(code, severity(code), message, tuple(sorted(set(records))),
                          (subject.kind, subject.key) if subject is not None else None)
        self.out.anomalies.append(anomaly)
        if subject is not None:
            subject.anomalies.append(anomaly)
            if verdict is not None and subject.verdict != LEAKED:
                subject.verdict = verdict

    def new(self, kind: str, key: int, label: str = "") -> Lifecycle:
        gens = self.out._all[kind].setdefault(key, [])
        lc = Lifecycle(kind, key, generation=len(gens), label=label)
        gens.append(lc)
        return lc

    def fast_state(self) -> tuple[Any, ...]:
        """What `_pass.run` works on: this pass's own tables, and how to read records."""
        return (self.asked, self.interrupted, self.recent, self.fhs, self.unseen, self.nodes,
                _Asked, LifeEvent, *_FAST_TABLES, 2 * _RECENT, _RECENT, b"")

    # --- records ----------------------------------------------------------------------

    def record(self, i: int, obj: list[Any]) -> None:
        """Record `i`, as its on-disk array (see `traces.records`)."""
        kind = obj[0]
        if kind == Kind.REQUEST:
            self.request(i, obj[1], obj[2])
        elif kind == Kind.REPLY:
            self.reply(i, obj[1], obj[2], obj[3] if len(obj) == 4 else None)
        else:
            self.other(i, obj)

    def other(self, i: int, obj: list[Any]) -> None:
        """An IOCTL or EVENT record, as its on-disk array (see `traces.records`)."""
        if obj[0] == Kind.IOCTL:
            self.ioctl(i, obj[1], obj[2])
        elif obj[2].get("event") == "session_end":
            self.out.ended = True
            self.out.end_reason = str(obj[2].get("reason", ""))
            self.out.end_at = (i, obj[1])
        elif obj[2].get("event") == "reply_rejected":
            self.rejected_later(i, obj[2])

    def request(self, i: int, ts: int, raw: bytes) -> None:
        if len(raw) < wire.IN:
            return
        opcode, unique, nodeid = _IN_PEEK.unpack_from(raw)
        if unique > self.highest and not unique & FUSE_UNIQUE_RESEND:
            self.highest = unique
        if opcode in _PLAIN or (opcode == Opcode.GETATTR and not _getattr_fh(raw)):
            if unique:  # the common case: only pairing matters
                self.asked[unique] = _new_asked((i, ts, opcode, nodeid, b""))
            return
        directory = _FH_USES.get(opcode)
        fh = wire.first_fh(raw) if directory is not None else None
        if fh is not None:  # READ, WRITE, FLUSH ...
            if unique:
                self.asked[unique] = _new_asked((i, ts, opcode, nodeid, b""))
            key = (directory, fh)
            lc = self.fhs.get(key)
            if lc is not None and key not in self.unseen:
                lc.events.append(_new_event((i, ts, _op(opcode), "")))
            else:
                self.use(i, ts, opcode, directory, key[1], nodeid)
            return
        if opcode == Opcode.INIT:
            self.dec.feed_request(raw)
            self.init_request = i
            self.kernel_flags = self.dec.kernel_flags
        if unique and opcode not in UNPAIRED:
            self.asked[unique] = _new_asked((i, ts, opcode, nodeid,
                                             raw if opcode in ENTRY_REPLIES else b""))
        if opcode == Opcode.INTERRUPT:
            target = wire.interrupted_unique(raw) or 0
            if target in self.asked:
                self.interrupted[target] = i
        elif opcode in FORGETS:
            for node, n in wire.forgets(opcode, raw, nodeid):
                self.forget(i, ts, node, n, _op(opcode))
        elif opcode in _FH_NAMED:
            directory = opcode in DIR_HANDLE_OPS
            for fh in wire.request_fhs(opcode, raw):
                self.use(i, ts, opcode, directory, fh, nodeid)

    def use(self, i: int, ts: int, opcode: int, directory: bool, fh: int, nodeid: int) -> None:
        key = (directory, fh)
        lc = self.fhs.get(key)
        if lc is None:
            if self.init_request is not None and not self.out._all["fh"].get(fh):
                lc = self.new("fh", fh, "directory handle" if directory else "file handle")
                lc.add(i, ts, _op(opcode), f"nodeid={nodeid}")
                self.flag("fh-unknown", f"{_op(opcode)} #{i} uses fh {fh:#x}, which no open "
                                        f"reply returned", [i], lc)
                lc.state = "unknown"
            return
        opens = self.opens.get(key, [])
        if key in self.unseen:
            self.unseen.discard(key)
            for o in opens:
                o.seen = True
        if opcode not in RELEASES:
            lc.add(i, ts, _op(opcode))
            return
        lc.add(i, ts, _op(opcode), f"nodeid={nodeid}")
        match = next((o for o in opens if o.nodeid == nodeid), opens[0] if opens else None)
        self.end_open(i, ts, key, lc, match, "released")

    def end_open(self, i: int, ts: int, key: tuple[bool, int], lc: Lifecycle,
                 match: _Open | None, state: str) -> None:
        """One open of handle `key` is over (released, or never made): its backing id lets
        go of it, and after the last one the handle's lifecycle ends in `state`."""
        if match is not None:
            self.opens[key].remove(match)
            self.release_backing(i, ts, match, key[1])
        lc.count -= 1
        if lc.count <= 0:
            del self.fhs[key]
            self.opens.pop(key, None)
            lc.state = state
            if lc.verdict == OPEN_AT_END:
                lc.verdict = CLOSED

    def release_backing(self, i: int, ts: int, o: _Open, fh: int) -> None:
        b = o.backing
        if b is None:
            return
        b.count -= 1
        b.add(i, ts, "RELEASE", f"fh={fh:#x} nodeid={o.nodeid}")
        held = self.inode_backing.get(o.nodeid)
        if held is not None and held[0] is b:
            if held[1] <= 1:
                del self.inode_backing[o.nodeid]
            else:
                self.inode_backing[o.nodeid] = (b, held[1] - 1)

    def reply(self, i: int, ts: int, raw: bytes, meta: dict[str, Any] | None) -> None:
        if len(raw) < wire.OUT:
            return
        error, unique = _OUT_PEEK.unpack_from(raw)
        if unique == 0:
            return  # a notification: nothing to pair
        asked = self.asked.pop(unique, None)
        rejected = meta.get("write_errno") if meta else None
        if rejected:
            self.rejected(i, rejected, asked, unique, self.interrupted.get(unique))
        interrupt = self.interrupted.pop(unique, None) if self.interrupted else None
        if asked is None:
            if unique & ~FUSE_UNIQUE_RESEND <= self.highest:  # the kernel numbers upwards
                self.flag("reply-duplicate", f"reply #{i} answers unique {unique}, already "
                                             f"answered (or a request that wants no reply)", [i])
            elif self.init_request is not None:
                self.flag("reply-unknown-unique", f"reply #{i} answers unique {unique}, which "
                                                  f"the kernel never sent", [i])
            return
        opcode = asked.opcode
        if opcode == Opcode.INIT:
            self.init(i, raw, error, asked)
        if error or rejected or opcode not in _MAKES_IDS:
            return
        recent = self.recent  # until the recorder says whether the kernel took it
        recent[unique] = (i, asked, raw, interrupt)
        if len(recent) > 2 * _RECENT:  # keep the latest, trimming now and then (in place)
            for old in list(islice(recent, len(recent) - _RECENT)):
                del recent[old]
        if opcode in ENTRY_REPLIES:
            node = wire.entry_nodeid(raw)
            if node:
                self.lookup(i, ts, node, f"{_op(opcode)} reply", asked)
        elif opcode == Opcode.READDIRPLUS:
            for node, name in wire.direntplus_nodeids(raw):
                self.lookup(i, ts, node, "READDIRPLUS entry", None,
                            name.decode("utf-8", "backslashreplace"))
        if opcode in OPEN_REPLIES:
            self.opened(i, ts, raw, asked)

    def rejected(self, i: int, err: int, asked: _Asked | None, unique: int,
                 interrupt: int | None, *proof: int) -> None:
        what = _op(asked.opcode) if asked else f"unique {unique}"
        records = [i, *proof] + ([asked.index] if asked else [])
        self.flag("reply-rejected", f"the kernel rejected the reply #{i} to {what} with "
                                    f"{errno_name(err)}: {_rejection_cause(err, interrupt)}",
                  records)

    def rejected_later(self, i: int, meta: dict[str, Any]) -> None:
        """A `reply_rejected` event: the recorder learnt after recording the reply that
        the kernel refused it, so what the reply handed out never existed."""
        unique, err = meta.get("unique", 0), meta.get("write_errno", 0)
        # ENODEV, or refused once the connection had ended: the mount was already gone,
        # and its requests with it; nothing went wrong
        harmless = err == errno.ENODEV or bool(meta.get("connection_gone"))
        # a notification refused with ENOENT: the kernel had nothing cached to invalidate
        # (libfuse's callers ignore it too), which a race with a FORGET makes ordinary
        harmless |= not unique and err == errno.ENOENT
        found = self.recent.pop(unique, None)
        if found is None:  # a reply that handed out nothing: only the event is kept
            if not harmless:
                what = _op(meta.get("opcode") or 0)
                self.flag("reply-rejected", f"the kernel rejected the reply to {what} (unique "
                                            f"{unique}) with {errno_name(err)}, event #{i}: "
                                            f"{_rejection_cause(err, None)}", [i])
            return
        reply, asked, raw, interrupt = found
        if not harmless:
            self.rejected(reply, err, asked, unique, interrupt, i)
        if asked.opcode in ENTRY_REPLIES:
            lc = self.nodes.get(wire.entry_nodeid(raw) or 0)
            if lc is not None:
                self.forget(i, lc.events[-1].ts, lc.key, 1, "rejected reply")
        if asked.opcode in OPEN_REPLIES:
            self.unopen(i, reply, asked, raw)

    def unopen(self, i: int, reply: int, asked: _Asked, raw: bytes) -> None:
        """Take back an open whose reply the kernel refused."""
        out = wire.open_out(asked.opcode, raw)
        if out is None:
            return
        key = (asked.opcode == Opcode.OPENDIR, out[0])
        opens = self.opens.get(key, [])
        match = next((o for o in opens if o.reply == reply), None)
        lc = self.fhs.get(key)
        if match is None or lc is None:
            return
        lc.add(i, lc.events[-1].ts, "reply rejected", "the kernel never opened it")
        self.end_open(i, lc.events[-1].ts, key, lc, match, "rejected")

    # --- INIT -------------------------------------------------------------------------

    def init(self, i: int, raw: bytes, error: int, asked: _Asked) -> None:
        self.init_reply = i
        if error:
            self.flag("init-failed", f"the server answered INIT with {errno_name(error)}",
                      [asked.index, i])
            return
        brief = self.dec.feed_reply(raw).brief
        ctx = self.dec.ctx
        self.out.dialect = ctx.dialect
        flags = brief.get("flags", 0) or 0
        if flags & (1 << 30):  # FUSE_INIT_EXT: flags2 counts
            flags |= (brief.get("flags2", 0) or 0) << 32
        offered = self.kernel_flags if self.kernel_flags is not None else flags
        depth = brief.get("max_stack_depth", 0) or 0
        self.out.init = {"minor": ctx.minor, "flags": ctx.flags, "dialect": ctx.dialect.value,
                         "max_write": brief.get("max_write"), "max_stack_depth": depth,
                         "kernel_flags": offered, "reply_flags": flags}
        extra = flags & ~offered & ~((1 << 30) | (1 << 31))  # INIT_EXT/bit 31 are not features
        if extra:
            self.flag("init-flags-not-offered", f"the INIT reply #{i} sets {flags_repr(extra, INIT_FLAGS)}, "
                                                f"which the kernel did not offer", [asked.index, i])
        max_write = brief.get("max_write")
        if max_write is not None and max_write < 4096:
            self.flag("init-max-write-small", f"INIT max_write={max_write} (#{i}); the kernel "
                                              f"uses 4096", [i])
        if not flags & FUSE_PASSTHROUGH or not offered & FUSE_PASSTHROUGH:
            return
        if flags & FUSE_WRITEBACK_CACHE:
            self.passthrough_off = ("backing-eperm-writeback", "FUSE_WRITEBACK_CACHE was "
                                    f"negotiated along with FUSE_PASSTHROUGH in INIT #{i}")
        elif not 1 <= depth <= 2:
            self.passthrough_off = ("backing-eperm-stack-depth",
                                    f"INIT #{i} sets max_stack_depth={depth} (valid: 1 or 2)")
        if self.passthrough_off is not None:
            self.flag("init-passthrough-off", f"the INIT reply asks for FUSE_PASSTHROUGH but "
                                              f"the kernel turns it off: {self.passthrough_off[1]}",
                      [i])
        else:
            self.passthrough = ctx.dialect is Dialect.MAINLINE

    # --- nodes ------------------------------------------------------------------------

    def lookup(self, i: int, ts: int, node: int, what: str, asked: _Asked | None,
               name: str = "") -> None:
        """One more reference to `node`; the name, from the reply or the request, labels it."""
        lc = self.nodes.get(node)
        if lc is None:
            lc = self.nodes[node] = self.new("node", node)
        lc.count += 1
        lc.events.append(_new_event((i, ts, what, f"nlookup={lc.count}")))
        if not lc.label:
            lc.label = name or (wire.entry_name(asked.opcode, asked.raw, self.dec.ctx.minor)
                                if asked else "")

    def forget(self, i: int, ts: int, node: int, n: int, what: str) -> None:
        lc = self.nodes.get(node)
        if lc is None:
            if node == FUSE_ROOT_ID or self.init_request is None:
                return
            lc = self.new("node", node)
        lc.count -= n
        lc.add(i, ts, what, f"nlookup-={n} leaves {lc.count}")
        if lc.count < 0:
            looked = len(lc.events) - 1
            self.flag("node-over-forgotten", f"node {node} is forgotten {n} more time(s) than "
                                             f"it was looked up (#{i}, after {looked} lookups)",
                      lc.records, lc)
        if lc.count <= 0:
            self.nodes.pop(node, None)
            lc.state = "forgotten"
            if lc.verdict == OPEN_AT_END:
                lc.verdict = CLOSED

    # --- opens and passthrough --------------------------------------------------------

    def opened(self, i: int, ts: int, raw: bytes, asked: _Asked) -> None:
        opcode = asked.opcode
        out = wire.open_out(opcode, raw)
        if out is None:
            return
        fh, oflags, bid = out
        nodeid = (wire.entry_nodeid(raw) or 0) if opcode in ENTRY_REPLIES else asked.nodeid
        directory = opcode == Opcode.OPENDIR
        key = (directory, fh)
        lc = self.fhs.get(key)
        if lc is None:
            lc = self.fhs[key] = self.new("fh", fh, "directory handle" if directory else "file handle")
        lc.count += 1
        lc.state = "open"
        android = self.out.dialect is Dialect.ANDROID
        pt = bool(bid) if android else bool(oflags & FOPEN_PASSTHROUGH)
        lc.add(i, ts, f"{_op(opcode)} reply", f"nodeid={nodeid} open_flags={oflags:#x}"
               + (f" {'passthrough_fh' if android else 'backing_id'}={bid}" if bid or pt else ""))
        backing = None
        if not directory and (pt or bid):
            backing = self.passthrough_open(i, ts, lc, fh, oflags, bid, pt, nodeid, asked)
        self.opens.setdefault(key, []).append(_Open(nodeid, backing, i))
        if backing is not None:
            self.unseen.add(key)

    def passthrough_open(self, i: int, ts: int, handle: Lifecycle, fh: int, oflags: int,
                         bid: int, pt: bool, nodeid: int, asked: _Asked) -> Lifecycle | None:
        """Check one open reply that carries a backing id; the lifecycle it attaches to."""
        android = self.out.dialect is Dialect.ANDROID
        where = f"{_op(asked.opcode)} reply #{i} (fh {fh:#x}, node {nodeid})"
        if not pt:
            self.flag("passthrough-id-without-flag", f"{where} carries backing id {bid} "
                                                     f"without FOPEN_PASSTHROUGH", [i], handle)
            return None
        if not android and not self.passthrough:
            why = self.passthrough_off[1] if self.passthrough_off else (
                "INIT never negotiated FUSE_PASSTHROUGH")
            records = [i] + ([self.init_reply] if self.init_reply is not None else [])
            self.flag("passthrough-not-negotiated", f"{where} sets FOPEN_PASSTHROUGH, but {why}",
                      records, handle)
        if bid == 0:
            self.flag("passthrough-zero-id", f"{where} sets FOPEN_PASSTHROUGH with backing id 0",
                      [i], handle)
            return None
        if not android and oflags & FOPEN_DIRECT_IO:
            self.flag("passthrough-direct-io", f"{where} sets FOPEN_DIRECT_IO with "
                                               f"FOPEN_PASSTHROUGH", [i], handle)
        b = self.backing.get(bid)
        if b is None:
            gens = self.out._all["backing"].get(bid)
            if gens:
                last = gens[-1]
                self.flag("backing-used-after-close", f"{where} carries backing id {bid}, "
                                                      f"closed at #{last.events[-1].index}",
                          [*last.records, i], last)
                last.add(i, ts, "OPEN reply after close", f"fh={fh:#x}")
            else:
                lc = self.new("backing", bid, "never opened")
                lc.add(i, ts, f"{_op(asked.opcode)} reply", f"fh={fh:#x} nodeid={nodeid}")
                lc.state = "unknown"
                self.flag("backing-unknown-id", f"{where} carries backing id {bid}, which no "
                                                f"BACKING_OPEN returned", [i], lc)
            return None
        b.count += 1
        b.add(i, ts, f"{_op(asked.opcode)} reply", f"fh={fh:#x} nodeid={nodeid}")
        if android:  # the id is consumed by the open
            del self.backing[bid]
            b.state, b.verdict = "consumed", CLOSED
            return None
        held = self.inode_backing.get(nodeid)
        if held is not None and held[0] is not b and held[1] > 0:
            other = held[0]
            self.flag("passthrough-conflicting-ids",
                      f"{where} carries backing id {bid} while node {nodeid} is open with "
                      f"backing id {other.key}: the kernel fails this open with EIO",
                      [other.events[0].index, i], b)
        else:
            self.inode_backing[nodeid] = (b, (held[1] if held else 0) + 1)
        return b

    # --- ioctls -----------------------------------------------------------------------

    def ioctl(self, i: int, ts: int, meta: dict[str, Any]) -> None:
        cmd, arg, err = meta.get("cmd", 0), meta.get("arg") or b"", meta.get("errno", 0)
        android = self.out.dialect is Dialect.ANDROID
        if cmd in _ANDROID_OPENS or (cmd == DevIoctl.BACKING_OPEN and android):
            self.backing_open(i, ts, meta, "PASSTHROUGH_OPEN")
        elif cmd == DevIoctl.BACKING_OPEN:
            self.backing_open(i, ts, meta, "BACKING_OPEN")
        elif cmd == DevIoctl.BACKING_CLOSE:
            bid = int.from_bytes(arg[:4], "little") if len(arg) >= 4 else -1
            self.backing_close(i, ts, bid, err)

    def backing_open(self, i: int, ts: int, meta: dict[str, Any], name: str) -> None:
        arg, result, err = meta.get("arg") or b"", meta.get("result", -1), meta.get("errno", 0)
        fd = int.from_bytes(arg[:4], "little", signed=True) if len(arg) >= 4 else None
        where = f"{name} #{i} (fd={fd}{', ' + meta['path'] if meta.get('path') else ''})"
        if err and isinstance(meta.get("recorder_error"), str):
            self.flag("recorder-failed", f"{where} was not made: fusetrace failed "
                                         f"{meta['recorder_error']} (the server got "
                                         f"{errno_name(err)} from fusetrace, not the kernel)", [i])
            return
        if err:
            code, why = self.eperm_cause() if err == errno.EPERM else _UNSUPPORTED.get(err, (
                "backing-open-failed", f"failed with {errno_name(err)}"))
            self.flag(code, f"{where} {why}", [i, *([self.init_reply] if self.init_reply is not
                                                     None and err == errno.EPERM else [])])
            return
        lc = self.new("backing", result, str(meta.get("path") or ""))
        lc.add(i, ts, name, f"fd={fd} = {result}"
                                + (f" path={meta['path']}" if meta.get("path") else ""))
        self.backing[result] = lc

    def eperm_cause(self) -> tuple[str, str]:
        """Why BACKING_OPEN said EPERM: the kernel uses that errno for four causes."""
        if self.init_reply is None:
            return "backing-open-failed", "failed with EPERM (no INIT exchange in the trace)"
        offered = self.kernel_flags or 0
        if not offered & FUSE_PASSTHROUGH:
            return ("backing-eperm-not-offered", "failed with EPERM: the kernel did not offer "
                    "FUSE_PASSTHROUGH in INIT (kernel older than 6.9, or built without it)")
        if self.passthrough_off is not None:
            code, why = self.passthrough_off
            return code, f"failed with EPERM: passthrough is off because {why}"
        if not self.passthrough:
            return ("backing-eperm-not-negotiated", f"failed with EPERM: the INIT reply "
                    f"#{self.init_reply} did not ask for FUSE_PASSTHROUGH")
        return ("backing-eperm-no-cap", "failed with EPERM although passthrough was "
                "negotiated: the server thread that called it lacks CAP_SYS_ADMIN in its "
                "effective capabilities")

    def backing_close(self, i: int, ts: int, bid: int, err: int) -> None:
        lc = self.backing.get(bid)
        if lc is None:
            gens = self.out._all["backing"].get(bid)
            if gens:
                last = gens[-1]
                last.add(i, ts, "BACKING_CLOSE again", f"= {errno_name(err) if err else 0}")
                self.flag("backing-close-twice", f"BACKING_CLOSE #{i} of backing id {bid}, "
                                                 f"already closed at #{last.events[-2].index}",
                          last.records, last)
            else:
                self.flag("backing-close-unknown", f"BACKING_CLOSE #{i} of backing id {bid}, "
                                                   f"which no BACKING_OPEN in the trace returned"
                          + (f" ({errno_name(err)})" if err else ""), [i])
            return
        lc.add(i, ts, "BACKING_CLOSE", f"= {'-1 ' + errno_name(err) if err else 0}")
        if err:
            return
        del self.backing[bid]
        lc.state = "closed"
        if lc.verdict == OPEN_AT_END:
            lc.verdict = CLOSED
        for directory, fh in self.unseen:
            for o in self.opens.get((directory, fh), ()):
                if o.backing is lc and not o.seen:
                    self.flag("backing-close-in-flight",
                              f"BACKING_CLOSE #{i} of backing id {bid} comes right after the "
                              f"open reply #{o.reply} carrying it (fh {fh:#x}), before the "
                              f"kernel used that handle", [o.reply, i], lc, verdict=None)

    # --- the end ----------------------------------------------------------------------

    def finish(self) -> None:
        """Judge what is still open: leaks after a clean end, notes otherwise."""
        out = self.out
        if out.clean_end:
            end = "the session ended"
        elif out.ended:
            end = f"the session ended ({out.end_reason}) before it was closed"
        else:
            end = "the trace ends without the session's end (cut short or recorder killed)"
        if self.init_request is not None and self.init_reply is None:
            self.flag("init-unanswered", "the kernel's INIT was never answered",
                      [self.init_request])
        for bid, lc in sorted(self.backing.items()):
            lc.state = "open"
            if out.clean_end:
                what = "consumed by an open reply" if out.dialect is Dialect.ANDROID else "closed"
                self.flag("backing-leak", f"backing id {bid} ({lc.label or 'no path'}) opened at "
                                          f"#{lc.events[0].index} was never {what}",
                          lc.records, lc, verdict=LEAKED)
            else:
                self.flag("open-at-end", f"backing id {bid} is still open: {end}", lc.records,
                          lc, verdict=None)
        for (directory, fh), lc in sorted(self.fhs.items()):
            if out.clean_end:
                self.flag("fh-never-released", f"{lc.label} {fh:#x} opened at "
                                               f"#{lc.events[0].index} was never released",
                          lc.records, lc, verdict=LEAKED)
            else:
                self.flag("open-at-end", f"{lc.label} {fh:#x} is still open: {end}",
                          lc.records[:1], lc, verdict=None)
        if out.clean_end and out.end_at is not None:
            # At unmount the kernel aborts the connection before it evicts the inodes: their
            # FORGETs are dropped, and the server's lookup counts end with the session.
            at, ts = out.end_at
            for lc in self.nodes.values():
                lc.add(at, ts, "unmount", f"nlookup={lc.count} dropped with the connection "
                                          f"(the kernel sends no FORGET at unmount)")
                lc.state = "released at unmount"
                if lc.verdict == OPEN_AT_END:
                    lc.verdict = RELEASED_AT_UNMOUNT
        for unique, asked in sorted(self.asked.items(), key=lambda kv: kv[1].index):
            what = f"{_op(asked.opcode)} #{asked.index} (unique {unique})"
            interrupt = self.interrupted.get(unique)
            if interrupt is not None:
                what += f", interrupted at #{interrupt},"
            if out.clean_end:
                self.flag("request-unanswered", f"{what} was never answered",
                          [asked.index] + ([interrupt] if interrupt is not None else []))
            else:
                self.flag("open-at-end", f"{what} is unanswered: {end}", [asked.index])
        out.anomalies.sort(key=lambda a: (a.records[0] if a.records else -1, a.code))

