"""`fusetrace export --perfetto`: a trace as Chrome trace-event JSON for Perfetto's UI and
chrome://tracing.

The layout:
- one process per requesting thread (the `pid` of `fuse_in_header`, which is the calling
  thread's id), each request a complete slice ("X") from request to reply, named by
  opcode, with the request's and reply's fields as args and errors marked (`error` arg,
  category `fuse,error`); requests that overlap on one thread (readahead, async writes)
  go on extra lanes of that process, because slices on one thread must nest;
- requests without a reply (FORGET, BATCH_FORGET, INTERRUPT) as instants on their
  thread; requests never answered as slices up to the end of the trace (`unanswered`);
- one process per server process the ioctls name, a thread per ioctl-calling thread,
  each ioctl an instant there; notifications and session events on a "session" track;
- each backing id lifecycle an async span ("b"/"e", category `backing`) from its first
  to its last event, with a flow arrow ("s"/"f") from the ioctl that registered it to
  each open slice whose reply handed it to the kernel.
Timestamps are the trace's monotonic clock in µs (fractions keep the ns).

Caveat: pid 0 (requests the kernel makes for itself) and the synthetic tracks take ids
above the kernel's PID_MAX_LIMIT, so they never collide with a real thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dissectors.constants import NO_REPLY_OPCODES, Opcode
from dissectors.fields import errno_name
from dissectors.quick import Brief
from dissectors.summary import notify_name, opcode_name
from inspector.lifecycles import analyse
from inspector.timeline import Entry, entries, event_text
from traces import Kind, TraceReader

from .output import ExportError, atomic_output

_PID_LIMIT = 1 << 22  # PID_MAX_LIMIT: real pids and tids stay below
KERNEL_PID = _PID_LIMIT  # requests whose header pid is 0
SESSION_PID = _PID_LIMIT + 1  # notifications and session events
_NO_REPLY = frozenset(NO_REPLY_OPCODES) | {Opcode.INTERRUPT}


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _plain(value: Any) -> Any:
    """A field value as JSON: names as text, bytes as text when printable, else hex."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value).rstrip(b"\0")
        text = data.decode("utf-8", "replace")
        return text if text.isprintable() else bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def brief_fields(brief: Brief) -> dict[str, Any]:
    """The body fields of a message by name (the header's are the slice's own args)."""
    found = {name: val for comp, vals in brief.layers for name, val in zip(comp.names, vals)}
    found.update(brief.extras)
    return {k: _plain(v) for k, v in found.items()}


@dataclass
class _Slice:
    pid: int
    start: int
    end: int
    name: str
    args: dict[str, Any]
    error: bool
    request_index: int
    reply_index: int | None
    tid: int = 0


@dataclass
class _Builder:
    events: list[dict[str, Any]] = field(default_factory=list)
    slices: list[_Slice] = field(default_factory=list)
    open_by_unique: dict[int, _Slice] = field(default_factory=dict)
    slice_of_reply: dict[int, _Slice] = field(default_factory=dict)
    ioctl_at: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # index → pid, tid, ts
    names: dict[tuple[int, int | None], str] = field(default_factory=dict)
    server_pid: int = SESSION_PID
    last_ts: int = 0

    def instant(self, pid: int, tid: int, ts: int, name: str, cat: str,
                args: dict[str, Any]) -> None:
        self.events.append({"name": name, "cat": cat, "ph": "i", "s": "t", "ts": _us(ts),
                            "pid": pid, "tid": tid, "args": args})

    def request(self, entry: Entry) -> None:
        rec, brief = entry.record, entry.message.brief  # type: ignore[union-attr]
        pid = brief.pid or KERNEL_PID
        self.names.setdefault((pid, None), f"pid {brief.pid}" if brief.pid else "kernel (pid 0)")
        name = opcode_name(brief.opcode)
        args = {"unique": brief.unique, "nodeid": brief.nodeid, "record": rec.index,
                "request": brief_fields(brief)}
        if brief.reason:
            args["raw_reason"] = brief.reason
        if brief.opcode in _NO_REPLY or not brief.unique:
            self.instant(pid, pid, rec.ts, name, "fuse", args)
            return
        s = _Slice(pid, rec.ts, rec.ts, name, args, False, rec.index, None)
        self.slices.append(s)
        self.open_by_unique[brief.unique] = s

    def reply(self, entry: Entry) -> None:
        rec, brief = entry.record, entry.message.brief  # type: ignore[union-attr]
        if brief.direction == "notify":
            self.instant(SESSION_PID, SESSION_PID, rec.ts, notify_name(brief.error), "notify",
                         {"record": rec.index, **brief_fields(brief)})
            return
        s = self.open_by_unique.pop(brief.unique, None)
        if s is None:  # a reply to a request the trace does not hold
            self.instant(SESSION_PID, SESSION_PID, rec.ts, f"{opcode_name(brief.opcode)} reply",
                         "fuse", {"record": rec.index, "unique": brief.unique})
            return
        s.end, s.reply_index = rec.ts, rec.index
        s.args["reply_record"] = rec.index
        s.args["reply"] = brief_fields(brief)
        if brief.error:
            s.error = True
            s.args["error"] = errno_name(-brief.error)
        if rec.meta.get("write_errno"):
            s.error = True
            s.args["rejected_by_kernel"] = errno_name(rec.meta["write_errno"])
        self.slice_of_reply[rec.index] = s

    def ioctl(self, entry: Entry) -> None:
        rec, call = entry.record, entry.ioctl
        assert call is not None
        meta = rec.meta
        pid, tid = meta.get("pid") or self.server_pid, meta.get("tid") or 0
        tid = tid or pid
        self.names.setdefault((pid, None), f"server {pid}")
        self.names.setdefault((pid, tid), f"thread {tid}")
        args: dict[str, Any] = {"record": rec.index, **call.fields, "result": call.result}
        if call.errno:
            args["errno"] = errno_name(call.errno)
        if meta.get("path"):
            args["path"] = meta["path"]
        self.instant(pid, tid, rec.ts, call.name, "ioctl,error" if call.errno else "ioctl", args)
        self.ioctl_at[rec.index] = (pid, tid, rec.ts)

    def event(self, entry: Entry) -> None:
        rec = entry.record
        if rec.event == "server_start" and isinstance(rec.meta.get("pid"), int):
            self.server_pid = rec.meta["pid"]
            self.names.setdefault((self.server_pid, None), f"server {self.server_pid}")
        self.instant(SESSION_PID, SESSION_PID, rec.ts, rec.event or "event", "session",
                     {"record": rec.index, "text": event_text(rec)})


def _lanes(slices: list[_Slice], names: dict[tuple[int, int | None], str]) -> None:
    """Give each slice a thread of its process so slices on one thread nest: the first
    lane is the requesting thread itself, overlaps go on numbered lanes."""
    ends: dict[int, list[tuple[int, int]]] = {}  # pid → [(tid, end of its last slice)]
    spare = _PID_LIMIT + 2
    for s in sorted(slices, key=lambda s: (s.start, s.request_index)):
        lanes = ends.setdefault(s.pid, [])
        for k, (tid, end) in enumerate(lanes):
            if end <= s.start:
                s.tid = tid
                lanes[k] = (tid, s.end)
                break
        else:
            if lanes:
                s.tid, spare = spare, spare + 1
                names[(s.pid, s.tid)] = f"{names[(s.pid, None)]} (overlap {len(lanes)})"
            else:
                s.tid = s.pid
                names[(s.pid, s.tid)] = names[(s.pid, None)]
            lanes.append((s.tid, s.end))


def perfetto_trace(path: str) -> dict[str, Any]:
    """The trace as one trace-event JSON object; a damaged trace up to the damage, with
    the reader's note on it as `otherData.damaged`."""
    b = _Builder()
    with TraceReader(path) as reader:
        header = reader.header
        for entry in entries(reader):
            kind = entry.record.kind
            b.last_ts = entry.record.ts
            if kind is Kind.REQUEST:
                b.request(entry)
            elif kind is Kind.REPLY:
                b.reply(entry)
            elif kind is Kind.IOCTL:
                b.ioctl(entry)
            else:
                b.event(entry)
        damaged = reader.tail
    for s in b.open_by_unique.values():
        s.end = b.last_ts
        s.args["unanswered"] = True
    _lanes(b.slices, b.names)
    for s in b.slices:
        b.events.append({"name": s.name, "cat": "fuse,error" if s.error else "fuse", "ph": "X",
                         "ts": _us(s.start), "dur": _us(s.end - s.start), "pid": s.pid,
                         "tid": s.tid, "args": s.args})
    _backing_spans(b, path)
    b.names[(SESSION_PID, None)] = "FUSE session"
    b.names[(SESSION_PID, SESSION_PID)] = "notifications and events"
    meta = []
    for (pid, tid), name in sorted(b.names.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        what = "process_name" if tid is None else "thread_name"
        meta.append({"name": what, "ph": "M", "pid": pid, "tid": tid or pid, "args": {"name": name}})
    b.events.sort(key=lambda e: e["ts"])
    return {"traceEvents": meta + b.events, "displayTimeUnit": "ns",
            "otherData": {"source": "fusetrace", "trace": path, "damaged": damaged,
                          "header": _plain({k: v for k, v in header.items() if k != "magic"})}}


def _backing_spans(b: _Builder, path: str) -> None:
    """Each backing id lifecycle as an async span, and flow arrows from its registering
    ioctl to the open slices that carried it."""
    analysis = analyse(path)
    flow = 0
    for n, lc in enumerate(analysis.lifecycles("backing")):
        if not lc.events:
            continue
        first, last = lc.events[0], lc.events[-1]
        pid, tid, _ = b.ioctl_at.get(first.index, (b.server_pid, b.server_pid, first.ts))
        end = last.ts if lc.state != "open" else max(last.ts, b.last_ts)
        span = {"cat": "backing", "name": lc.name, "id": f"backing-{n}", "pid": pid, "tid": tid}
        b.events.append({**span, "ph": "b", "ts": _us(first.ts),
                         "args": {"backing_id": lc.key, "generation": lc.generation,
                                  "label": lc.label, "verdict": lc.verdict,
                                  "records": lc.records}})
        b.events.append({**span, "ph": "e", "ts": _us(end), "args": {}})
        if first.index not in b.ioctl_at:
            continue
        for ev in lc.events:
            s = b.slice_of_reply.get(ev.index)
            if s is None:
                continue
            flow += 1
            ends = {"cat": "backing", "name": lc.name, "id": flow}
            b.events.append({**ends, "ph": "s", "ts": _us(first.ts), "pid": pid, "tid": tid})
            # inside the open's slice, at its reply: the arrow goes forward in time
            b.events.append({**ends, "ph": "f", "bp": "e", "ts": max(_us(s.start), _us(s.end) - 0.001),
                             "pid": s.pid, "tid": s.tid})


def write_perfetto(path: str, out_path: str) -> str | None:
    """Convert `path` and write it to `out_path` ("-": standard output), whole or not at
    all; returns the note on a damaged trace (None for a whole one)."""
    doc = perfetto_trace(path)
    try:
        text = json.dumps(doc, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path}: cannot write as JSON: {exc}") from None
    with atomic_output(out_path, binary=False) as out:
        out.write(text)
        out.write("\n")
    return doc["otherData"]["damaged"]  # type: ignore[no-any-return]
