"""One trace's tables as Arrow record batches, built while the trace streams by.

Records come from `TraceReader.arrays()` in chunks of `CHUNK`; each chunk becomes a few
batches, so memory holds one chunk plus the requests still waiting for their reply,
whatever the trace's size. Within a chunk the message columns are read in bulk: the
messages are joined into one buffer and every header field, and every body field of one
opcode, is gathered with one numpy indexing at the offset `layout` takes from the
dissectors. Python touches each message once, to pair a request with its reply by
`unique` (the rule of `inspector.exchanges`); names, ioctls and events are few and
decoded one by one.

Caveats: a cut trace gives the rows of its whole records (`tail` says where it stops);
requests without a reply get a row with NULL reply columns once the trace ends.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from functools import lru_cache
from itertools import islice
from operator import itemgetter
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from dissectors import SessionDecoder
from dissectors.constants import Opcode
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE
from dissectors.context import Dialect, FuseContext
from dissectors.fields import errno_name
from dissectors.ioctls import DevIoctl, ioctl_arg_fields, ioctl_name
from dissectors.summary import notify_name, opcode_name
from traces import Kind, TraceReader
from traces.stream import gc_paused

from ..exchanges import _NO_REPLY as NO_REPLY  # the exchanges' rule: who gets no reply
from . import layout
from .schema import BY_NAME, PARTITION, Column, Table

CHUNK = 1 << 16
_REQUEST, _REPLY, _IOCTL, _EVENT = (int(k) for k in Kind)
_PAD = bytes(16)  # gathers of fields a message is too short for read these zeros
_KIND, _TS, _BODY = itemgetter(0), itemgetter(1), itemgetter(2)
_INIT = int(Opcode.INIT)
_NO_REPLY_CODES = np.array(sorted(int(op) for op in NO_REPLY), np.uint32)
_OPENS = frozenset({DevIoctl.BACKING_OPEN, DevIoctl.PASSTHROUGH_OPEN_V1,
                    DevIoctl.PASSTHROUGH_OPEN_V2})

EXCHANGES, NOTIFICATIONS = BY_NAME["exchanges"], BY_NAME["notifications"]
IOCTLS, EVENTS = BY_NAME["ioctls"], BY_NAME["events"]
_REQ_SOURCED = tuple(c for c in EXCHANGES.columns
                     if c.sources and c.sources[0].side == "request" and c.name != "name")
_REPLY_SOURCED = tuple(c for c in EXCHANGES.columns if any(s.side == "reply" for s in c.sources))
_NOTIFY_NODE = NOTIFICATIONS.column("nodeid")


def _np(col: Column) -> np.dtype[Any]:
    return np.dtype(col.arrow.to_pandas_dtype())


def _gather(buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """The little-endian `dtype` values at byte positions `pos` of `buf`."""
    width = np.dtype(dtype).itemsize
    if width == 1:
        return buf[pos].view(dtype)
    return buf[pos[:, None] + np.arange(width)].view(dtype).reshape(-1)


class _Messages:
    """One chunk's messages in one buffer: where each starts and how much of it was kept."""

    def __init__(self, raws: list[bytes]) -> None:
        self.raws = raws
        self.kept = np.fromiter(map(len, raws), np.int64, len(raws))
        self.start = np.zeros(len(raws), np.int64)
        np.cumsum(self.kept[:-1], out=self.start[1:])
        self.pad = int(self.kept.sum())
        self.buf = np.frombuffer(b"".join(raws) + _PAD, np.uint8)

    def read(self, at: np.ndarray, slot: layout.Slot) -> tuple[np.ndarray, np.ndarray]:
        """(values, whether the message holds the field) for messages `at`."""
        size = np.dtype(slot.dtype).itemsize
        ok = self.kept[at] >= slot.at + size
        if slot.when is not None:
            flag_at, flag_type, bit = slot.when
            ok &= self.kept[at] >= flag_at + np.dtype(flag_type).itemsize
            flags = _gather(self.buf, np.where(ok, self.start[at] + flag_at, self.pad), flag_type)
            ok &= (flags & bit) != 0
        return _gather(self.buf, np.where(ok, self.start[at] + slot.at, self.pad), slot.dtype), ok

    def header(self, at: np.ndarray, side: str, name: str) -> np.ndarray:
        return self.read(at, layout.header_slot(side, name))[0]


class _Columns:
    """Columns being filled for some rows: numpy values and validity, or Python lists."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.lists: dict[str, list[Any]] = {}

    def array(self, col: Column, valid: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if col.name not in self.values:
            self.values[col.name] = np.zeros(self.n, _np(col))
            self.valid[col.name] = np.full(self.n, valid)
        return self.values[col.name], self.valid[col.name]

    def set(self, col: Column, values: np.ndarray, valid: np.ndarray | bool = True) -> None:
        self.values[col.name] = values.astype(_np(col), copy=False)
        self.valid[col.name] = np.broadcast_to(np.asarray(valid), (self.n,))

    def take(self, rows: np.ndarray) -> _Columns:
        out = _Columns(len(rows))
        out.values = {k: v[rows] for k, v in self.values.items()}
        out.valid = {k: v[rows] for k, v in self.valid.items()}
        out.lists = {k: [v[i] for i in rows.tolist()] for k, v in self.lists.items()}
        return out

    @staticmethod
    def concat(parts: list[_Columns]) -> _Columns:
        out = _Columns(sum(p.n for p in parts))
        for key in parts[0].values:
            out.values[key] = np.concatenate([p.values[key] for p in parts])
            out.valid[key] = np.concatenate([p.valid[key] for p in parts])
        for key in parts[0].lists:
            out.lists[key] = [v for p in parts for v in p.lists[key]]
        return out

    def arrow(self, col: Column) -> pa.Array:
        if col.name in self.lists:
            return pa.array(self.lists[col.name], col.arrow)
        if col.name not in self.values:
            return pa.nulls(self.n, col.arrow)
        valid = self.valid[col.name]
        mask = None if valid.all() else ~valid
        return pa.array(self.values[col.name], col.arrow, mask=mask)


def _named(codes: np.ndarray, valid: np.ndarray, name: Callable[[int], str]) -> pa.Array:
    """A string column of `name(code)`, naming each distinct code once."""
    if len(codes) == 0:
        return pa.array([], pa.string())
    distinct, inverse = np.unique(codes, return_inverse=True)
    names = pa.array([name(int(c)) for c in distinct], pa.string())
    indices = pa.array(inverse.astype(np.int32).reshape(-1), mask=None if valid.all() else ~valid)
    return pa.DictionaryArray.from_arrays(indices, names).cast(pa.string())


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def signed64(value: int) -> int:
    """A u64 as the BIGINT column holds it (the same 64 bits; see `schema.ARROW_TYPES`)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_json(value: Any) -> str:
    """JSON text of trace data (bytes as hex), for the JSON columns."""
    return json.dumps(_jsonable(value), separators=(",", ":"))


class _Pairs(NamedTuple):
    """One chunk's pairing: request rows and their reply messages, replies to no request
    the trace holds, notifications, and (message number, context) after each INIT reply."""

    rows: np.ndarray
    replies: np.ndarray
    orphans: np.ndarray
    notices: np.ndarray
    changes: list[tuple[int, FuseContext]]


class TraceTables:
    """Streams one trace's exchanges, notifications, ioctls and events as record batches.

    `with_trace` False leaves out the `trace` column (a partitioned export has it in the
    directory name). After `batches()` ends: `records`, `tail`, `first_ns`, `last_ns`,
    `ctx` (negotiated at INIT) and `header` describe the trace.
    """

    def __init__(self, path: str, name: str, with_trace: bool = True) -> None:
        self.path, self.name, self.with_trace = path, name, with_trace
        self.header: dict[str, Any] = {}
        self.records = 0
        self.tail: str | None = None
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.init_seen = False
        self._dec = SessionDecoder()
        self._waiting: dict[int, int] = {}  # unique → row in the carried requests
        self._init: dict[int, bytes] = {}  # unique → INIT request waiting for its reply
        self._carry: _Columns | None = None  # requests still waiting for their reply
        self._ctx = self._dec.ctx  # the context at the end of the last chunk

    @property
    def ctx(self) -> FuseContext:
        return self._dec.ctx

    def batches(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        with TraceReader(self.path) as reader:
            self.header = reader.header
            records = reader.arrays()
            base = 0
            while True:
                with gc_paused():  # a chunk is thousands of fresh lists: collections free nothing
                    objs = list(islice(records, CHUNK))
                    if not objs:
                        break
                    batches = list(self._chunk(objs, base))
                yield from batches
                base += len(objs)
            self.records, self.tail = reader.good_records, reader.tail
        if self._carry is not None and self._carry.n:
            yield "exchanges", self._exchange_batch(self._carry)
        self._carry, self._waiting = None, {}

    # --- one chunk --------------------------------------------------------------------

    def _chunk(self, objs: list[Any], base: int) -> Iterator[tuple[str, pa.RecordBatch]]:
        n = len(objs)
        kinds = np.fromiter(map(_KIND, objs), np.uint8, n)
        ts = np.fromiter(map(_TS, objs), np.int64, n)
        bodies = list(map(_BODY, objs))
        if self.first_ns is None:
            self.first_ns = int(ts[0])
        self.last_ns = int(ts[-1])
        at = np.flatnonzero(kinds <= _REPLY)  # record of each message
        msgs = _Messages([bodies[i] for i in at.tolist()])
        is_req = kinds[at] == _REQUEST
        rq, rp = np.flatnonzero(is_req), np.flatnonzero(~is_req)  # message numbers
        req_ok = msgs.kept[rq] >= IN_HEADER_SIZE
        rep_ok = msgs.kept[rp] >= OUT_HEADER_SIZE
        opcodes = msgs.header(rq, "request", "opcode")
        req_unique = msgs.header(rq, "request", "unique")
        rep_unique = msgs.header(rp, "reply", "unique")

        # requests of this chunk, their columns read in bulk
        new = _Columns(len(rq))
        new.set(EXCHANGES.column("record"), at[rq] + base)
        new.set(EXCHANGES.column("unique"), req_unique, req_ok)
        new.set(EXCHANGES.column("start_ns"), ts[at[rq]])
        new.values["_opcode"], new.valid["_opcode"] = opcodes.astype(np.uint32), req_ok
        for name in ("nodeid", "pid", "uid", "gid"):
            new.set(EXCHANGES.column(name), msgs.header(rq, "request", name), req_ok)
        new.set(EXCHANGES.column("request_bytes"), msgs.header(rq, "request", "len"), req_ok)

        # pair them (and earlier ones still waiting) with this chunk's replies
        carried = self._carry.n if self._carry is not None else 0
        pairs = self._pair(msgs, is_req, opcodes, req_unique, rep_unique, req_ok, rep_ok, carried)
        ctx_at = _ContextAt(self._ctx, pairs.changes)
        self._ctx = ctx_at.last
        self._request_fields(new, msgs, rq, opcodes, req_ok, ctx_at)
        rows = _Columns.concat([self._carry, new]) if self._carry is not None else new

        # rows whose exchange is over: answered, or expecting no reply
        pending = np.zeros(rows.n, bool)
        if self._waiting:
            pending[np.fromiter(self._waiting.values(), np.int64, len(self._waiting))] = True
        reply_of = np.full(rows.n, -1, np.int64)
        reply_of[pairs.rows] = pairs.replies
        done = np.flatnonzero(~pending)
        out = rows.take(done)
        self._reply_fields(out, reply_of[done], msgs, at, ts, base, ctx_at)
        if out.n:
            yield "exchanges", self._exchange_batch(out)
        if pairs.orphans.size:
            yield "exchanges", self._exchange_batch(self._orphans(pairs.orphans, msgs, at, ts,
                                                                  base))
        keep = np.flatnonzero(pending)
        renumber = {int(old): new_row for new_row, old in enumerate(keep.tolist())}
        self._waiting = {u: renumber[r] for u, r in self._waiting.items()}
        self._carry = rows.take(keep)

        if pairs.notices.size:
            yield "notifications", self._notifications(pairs.notices, msgs, at, ts, base)
        others = np.flatnonzero(kinds > _REPLY)
        if others.size:
            yield from self._others(others, kinds, ts, bodies, base, ctx_at, at)

    def _pair(self, msgs: _Messages, is_req: np.ndarray, opcodes: np.ndarray,
              req_unique: np.ndarray, rep_unique: np.ndarray, req_ok: np.ndarray,
              rep_ok: np.ndarray, carried: int) -> _Pairs:
        """Pair requests (rows from `carried` on) with replies in recorded order, and follow
        INIT's negotiation. Only requests that wait for a reply and replies to a unique
        take the Python loop, in message order."""
        rq, rp = np.flatnonzero(is_req), np.flatnonzero(~is_req)
        wants = req_ok & (req_unique != 0) & ~np.isin(opcodes, _NO_REPLY_CODES)
        answers = rep_ok & (rep_unique != 0)
        for k in np.flatnonzero(wants & (opcodes == _INIT)).tolist():
            self._init[int(req_unique[k])] = msgs.raws[rq[k]]
        waiters = np.flatnonzero(wants)
        at = np.concatenate([rq[waiters], rp[answers]])
        order = np.argsort(at, kind="stable")
        asks = np.concatenate([np.ones(len(waiters), bool), np.zeros(int(answers.sum()), bool)])
        uniques = np.concatenate([req_unique[waiters], rep_unique[answers]])
        values = np.concatenate([waiters + carried, rp[answers]])  # a request's row, a reply's message
        waiting, init = self._waiting, self._init
        paired_rows: list[int] = []
        paired_msgs: list[int] = []
        orphans: list[int] = []
        changes: list[tuple[int, FuseContext]] = []
        for ask, unique, value in zip(asks[order].tolist(), uniques[order].tolist(),
                                      values[order].tolist()):
            if ask:
                waiting[unique] = value
                continue
            j = waiting.pop(unique, -1)
            if j < 0:
                orphans.append(value)
                continue
            paired_rows.append(j)
            paired_msgs.append(value)
            if init and unique in init:
                self._dec.feed_request(init.pop(unique))
                self._dec.feed_reply(msgs.raws[value])
                self.init_seen = True
                changes.append((value + 1, self._dec.ctx))
        orphans_all = np.sort(np.concatenate([np.array(orphans, np.int64), rp[~rep_ok]]))
        return _Pairs(np.array(paired_rows, np.int64), np.array(paired_msgs, np.int64),
                      orphans_all, rp[rep_ok & (rep_unique == 0)], changes)

    def _request_fields(self, cols: _Columns, msgs: _Messages, rq: np.ndarray,
                        opcodes: np.ndarray, ok: np.ndarray, ctx_at: _ContextAt) -> None:
        """The request columns read from bodies (fh, offset, size, flags, name)."""
        for col in _REQ_SOURCED:
            cols.array(col)
        names: list[str | None] = [None] * len(rq)
        for ctx, sel in ctx_at.split(rq):
            codes = opcodes[sel]
            for op in np.unique(codes[ok[sel]]).tolist():
                these = sel[(codes == op) & ok[sel]]
                where = rq[these]
                for col in _REQ_SOURCED:
                    found = layout.slot(col.sources[0], ctx, op)
                    if found is not None:
                        values, valid = cols.array(col)
                        values[these], valid[these] = msgs.read(where, found)
                start = layout.name_at("request", ctx, op)
                if start is not None:
                    for k, m in zip(these.tolist(), where.tolist()):
                        raw = msgs.raws[m]
                        end = raw.find(b"\0", start)
                        if end >= 0:
                            names[k] = raw[start:end].decode("utf-8", "backslashreplace")
        cols.lists["name"] = names

    def _reply_fields(self, cols: _Columns, reply: np.ndarray, msgs: _Messages, at: np.ndarray,
                      ts: np.ndarray, base: int, ctx_at: _ContextAt) -> None:
        """The reply columns of rows whose reply is message `reply` (-1: none)."""
        has = reply >= 0
        m = np.where(has, reply, 0)
        if not len(msgs.raws):
            has = np.zeros(cols.n, bool)
        else:
            has &= msgs.kept[m] >= OUT_HEADER_SIZE
        self._reply_header(cols, m, has, msgs, at, ts, base)
        error = cols.values["error"]
        body_ok = has & (error == 0)
        opcodes = cols.values["_opcode"]
        for col in _REPLY_SOURCED:
            cols.array(col)
        for ctx, sel in ctx_at.split(m):
            sel = sel[body_ok[sel]]
            codes = opcodes[sel]
            for op in np.unique(codes).tolist():
                these = sel[codes == op]
                for col in _REPLY_SOURCED:
                    source = next(s for s in col.sources if s.side == "reply")
                    found = layout.slot(source, ctx, op)
                    if found is None:
                        continue
                    values, valid = cols.array(col)
                    got, got_ok = msgs.read(m[these], found)
                    fill = got_ok & ~valid[these]  # a request's own value comes first
                    values[these[fill]], valid[these[fill]] = got[fill], True

    @staticmethod
    def _reply_header(cols: _Columns, m: np.ndarray, has: np.ndarray, msgs: _Messages,
                      at: np.ndarray, ts: np.ndarray, base: int) -> None:
        if len(msgs.raws):
            error = -msgs.header(m, "reply", "error").astype(np.int64)
            size = msgs.header(m, "reply", "len")
            record = at[m] + base
            end = ts[at[m]]
        else:
            error = size = record = end = np.zeros(cols.n, np.int64)
        cols.set(EXCHANGES.column("reply_record"), record, has)
        cols.set(EXCHANGES.column("error"), error, has)
        cols.set(EXCHANGES.column("reply_bytes"), size, has)
        cols.set(EXCHANGES.column("end_ns"), end, has)
        if "start_ns" in cols.values:
            start_ok = cols.valid["start_ns"]
            cols.set(EXCHANGES.column("latency_ns"), end - cols.values["start_ns"], has & start_ok)

    def _orphans(self, orphans: np.ndarray, msgs: _Messages, at: np.ndarray, ts: np.ndarray,
                 base: int) -> _Columns:
        """Rows of replies to requests the trace does not hold."""
        cols = _Columns(len(orphans))
        has = msgs.kept[orphans] >= OUT_HEADER_SIZE
        cols.set(EXCHANGES.column("unique"), msgs.header(orphans, "reply", "unique"), has)
        self._reply_header(cols, orphans, has, msgs, at, ts, base)
        return cols

    def _exchange_batch(self, cols: _Columns) -> pa.RecordBatch:
        arrays, fields = [], []
        for col in EXCHANGES.columns:
            if col.name == PARTITION:
                if not self.with_trace:
                    continue
                array = _constant(self.name, cols.n)
            elif col.name == "opcode":
                codes = cols.values.get("_opcode", np.zeros(cols.n, np.uint32))
                valid = cols.valid.get("_opcode", np.zeros(cols.n, bool))
                array = _named(codes, valid, opcode_name)
            elif col.name == "error_name" and "error" in cols.values:
                array = _named(cols.values["error"], cols.valid["error"], errno_name)
            else:
                array = cols.arrow(col)
            arrays.append(array)
            fields.append(pa.field(col.name, col.arrow))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _notifications(self, notices: np.ndarray, msgs: _Messages, at: np.ndarray,
                       ts: np.ndarray, base: int) -> pa.RecordBatch:
        cols = _Columns(len(notices))
        cols.set(NOTIFICATIONS.column("record"), at[notices] + base)
        cols.set(NOTIFICATIONS.column("ts_ns"), ts[at[notices]])
        codes = msgs.header(notices, "reply", "error")
        cols.set(NOTIFICATIONS.column("code"), codes)
        cols.set(NOTIFICATIONS.column("bytes"), msgs.header(notices, "reply", "len"))
        values, valid = cols.array(_NOTIFY_NODE)
        for code in np.unique(codes).tolist():
            these = np.flatnonzero(codes == code)
            found = layout.slot(_NOTIFY_NODE.sources[0], self.ctx, code)
            if found is not None:
                values[these], valid[these] = msgs.read(notices[these], found)
        return self._batch(NOTIFICATIONS, cols, {"notify": _named(codes, np.ones(len(codes), bool),
                                                                   notify_name)})

    def _others(self, others: np.ndarray, kinds: np.ndarray, ts: np.ndarray, bodies: list[Any],
                base: int, ctx_at: _ContextAt, at: np.ndarray) -> Iterator[tuple[str, pa.RecordBatch]]:
        """IOCTL and EVENT records, one by one (a few in a hundred)."""
        ioctls: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        # the context at each record: after the INITs answered before it
        messages_before = np.searchsorted(at, others).tolist()
        for i, m, kind, t in zip(others.tolist(), messages_before, kinds[others].tolist(),
                                 ts[others].tolist()):
            meta = bodies[i]
            if kind == _IOCTL:
                ioctls.append(_ioctl_row(base + i, t, meta, ctx_at.at_message(m).dialect))
            else:
                detail = {k: v for k, v in meta.items() if k != "event"}
                events.append((base + i, t, str(meta["event"]), to_json(detail)))
        if ioctls:
            yield "ioctls", rows_batch(IOCTLS, ioctls, self.name, self.with_trace)
        if events:
            yield "events", rows_batch(EVENTS, events, self.name, self.with_trace)

    def _batch(self, table: Table, cols: _Columns, extra: dict[str, pa.Array]) -> pa.RecordBatch:
        arrays, fields = [], []
        for col in table.columns:
            if col.name == PARTITION:
                if not self.with_trace:
                    continue
                array = _constant(self.name, cols.n)
            else:
                array = extra[col.name] if col.name in extra else cols.arrow(col)
            arrays.append(array)
            fields.append(pa.field(col.name, col.arrow))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def rows_batch(table: Table, rows: list[tuple[Any, ...]], name: str,
               with_trace: bool) -> pa.RecordBatch:
    """A batch from row tuples holding every column but `trace`, in schema order."""
    names = [c.name for c in table.columns if c.name != PARTITION]
    data: dict[str, list[Any]] = {n: [r[k] for r in rows] for k, n in enumerate(names)}
    if with_trace:
        data[PARTITION] = [name] * len(rows)
    return pa.RecordBatch.from_pydict(data, schema=table.arrow_schema(with_trace))


def _constant(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                          pa.array([value])).cast(pa.string())


@lru_cache(maxsize=1024)
def _ioctl(cmd: int, arg: bytes, dialect: Dialect) -> tuple[str, dict[str, int]]:
    """Name and argument fields (memoized: a server passes the same few fds and ids)."""
    return ioctl_name(cmd, dialect), ioctl_arg_fields(cmd, arg, dialect)


def _ioctl_row(record: int, ts: int, meta: dict[str, Any], dialect: Dialect) -> tuple[Any, ...]:
    cmd = meta["cmd"]
    name, fields = _ioctl(cmd, meta.get("arg") or b"", dialect)
    result = meta.get("result")
    err = meta.get("errno", 0)
    if cmd in _OPENS:
        backing = result if err == 0 and type(result) is int and result >= 0 else None
    else:
        backing = fields.get("backing_id")
    fd = fields.get("fd", meta.get("fd"))
    return (record, ts, name, cmd, backing, fd, meta.get("path"),
            result, err, meta.get("pid"), meta.get("tid"))


class _ContextAt:
    """The connection's context at each message of a chunk (INIT replies change it)."""

    def __init__(self, before: FuseContext, changes: list[tuple[int, FuseContext]]) -> None:
        self.starts = [0] + [m for m, _ in changes]
        self.contexts = [before] + [c for _, c in changes]
        self.last = self.contexts[-1]

    def at_message(self, m: int) -> FuseContext:
        if len(self.contexts) == 1:
            return self.last
        return self.contexts[bisect_right(self.starts, m) - 1]

    def split(self, messages: np.ndarray) -> Iterator[tuple[FuseContext, np.ndarray]]:
        """(context, positions in `messages` it applies to) for message numbers."""
        if len(self.contexts) == 1:
            yield self.contexts[0], np.arange(len(messages))
            return
        which = np.searchsorted(np.array(self.starts), messages, side="right") - 1
        for k, ctx in enumerate(self.contexts):
            found = np.flatnonzero(which == k)
            if found.size:
                yield ctx, found
