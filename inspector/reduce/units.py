"""A trace cut into exchanges, each with the exchanges it needs, and written back out.

Which words of a message are node ids and file handles is the lifecycle pass's view of
the one table of ids (`inspector.lifecycles.wire`); a dependency missed here only costs
replays (a candidate missing it fails differently and is dropped), never correctness.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

from dissectors.constants import Opcode
from inspector.lifecycles import wire
from traces import Kind, Record, TraceReader, TraceReadError, TraceWriter

_IN_HEADER = struct.Struct("<IIQQ")  # len opcode unique nodeid
_OUT_HEADER = struct.Struct("<IiQ")  # len error unique
_ENTRY_REPLIES = frozenset({Opcode.LOOKUP, Opcode.MKNOD, Opcode.MKDIR, Opcode.SYMLINK,
                            Opcode.LINK, Opcode.CREATE, Opcode.TMPFILE})
_OPEN_REPLIES = frozenset({Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE, Opcode.TMPFILE})
ROOT = 1


@dataclass
class Unit:
    """One exchange: the records it is made of (request first) and what it needs."""

    opcode: int
    records: list[int] = field(default_factory=list)
    needs: set[int] = field(default_factory=set)  # indices of units


@dataclass
class Cut:
    """The trace as units, plus the records every candidate keeps."""

    header: dict[str, Any]
    records: list[Record]
    units: list[Unit]
    always: list[int]  # record indices: events, notifications, startup ioctls
    fixed: set[int]  # unit indices every candidate keeps (INIT)

    def closure(self, chosen: Iterable[int]) -> list[int]:
        """`chosen` with every unit it needs, transitively, in trace order."""
        todo, seen = list(chosen) + list(self.fixed), set()
        while todo:
            u = todo.pop()
            if u not in seen:
                seen.add(u)
                todo.extend(self.units[u].needs)
        return sorted(seen)

    def messages(self, units: Iterable[int]) -> int:
        return sum(len(self.units[u].records) for u in units)

    def write(self, path: str | os.PathLike[str], units: Iterable[int],
              replaced: dict[int, bytes] | None = None) -> None:
        """The candidate as an ordinary trace: kept records in their recorded order
        (`replaced`: record index → the bytes to write instead, for `fuzz`)."""
        keep = set(self.always)
        for u in units:
            keep.update(self.units[u].records)
        with TraceWriter(path, dict(self.header)) as out:
            for i in sorted(keep):
                _copy(out, self.records[i], (replaced or {}).get(i))


def _copy(out: TraceWriter, rec: Record, raw: bytes | None = None) -> None:
    meta = dict(rec.meta)
    if rec.kind is Kind.REQUEST:
        if raw is not None:
            meta.pop("len", None)
        out.request(rec.raw or b"" if raw is None else raw, ts=rec.ts, **meta)
    elif rec.kind is Kind.REPLY:
        out.reply(rec.raw or b"", ts=rec.ts, **meta)
    elif rec.kind is Kind.IOCTL:
        out.ioctl(ts=rec.ts, **meta)
    else:
        name = meta.pop("event")
        out.event(name, ts=rec.ts, **meta)


def cut(path: str | os.PathLike[str]) -> Cut:
    """Read `path` (TraceReadError on bad input) and cut it into units."""
    reader = TraceReader(path)
    header = {k: v for k, v in reader.header.items() if k not in ("magic", "format")}
    records = list(reader)
    if reader.tail:  # the damaged-trace rule (inspector.damaged): replays need the whole session
        raise TraceReadError(f"{path}: {reader.tail}; a replay needs the whole trace")
    units: list[Unit] = []
    always: list[int] = []
    by_unique: dict[int, int] = {}  # unique → unit of the request still waiting
    node_from: dict[int, int] = {}  # node id → unit whose reply handed it out
    fh_from: dict[int, int] = {}
    pending_ioctls: list[int] = []
    for rec in records:
        raw = rec.raw or b""
        if rec.kind is Kind.REQUEST and len(raw) >= _IN_HEADER.size:
            _, opcode, unique, nodeid = _IN_HEADER.unpack_from(raw)
            unit = Unit(opcode, [rec.index])
            if nodeid not in (0, ROOT) and nodeid in node_from:
                unit.needs.add(node_from[nodeid])
            for fh in wire.request_fhs(opcode, raw):
                if fh in fh_from:
                    unit.needs.add(fh_from[fh])
            if opcode == Opcode.INTERRUPT:
                target = wire.interrupted_unique(raw)
                if target in by_unique:
                    unit.needs.add(by_unique[target])
            units.append(unit)
            by_unique[unique] = len(units) - 1
        elif rec.kind is Kind.REPLY and len(raw) >= _OUT_HEADER.size:
            _, error, unique, = _OUT_HEADER.unpack_from(raw)
            u = by_unique.pop(unique, None) if unique else None
            if u is None:
                always.append(rec.index)
                continue
            unit = units[u]
            unit.records += pending_ioctls + [rec.index]
            pending_ioctls = []
            if error == 0:
                _given(unit, u, raw, node_from, fh_from)
        elif rec.kind is Kind.IOCTL and units:
            pending_ioctls.append(rec.index)  # made for the exchange the next reply ends
        else:
            always.append(rec.index)
    always += pending_ioctls
    fixed = {i for i, u in enumerate(units) if u.opcode == Opcode.INIT}
    return Cut(header, records, units, sorted(always), fixed)


def _given(unit: Unit, u: int, raw: bytes, node_from: dict[int, int],
           fh_from: dict[int, int]) -> None:
    """Record the node ids and handles a successful reply hands out."""
    if unit.opcode in _ENTRY_REPLIES:
        nodeid = wire.entry_nodeid(raw)
        if nodeid:
            node_from.setdefault(nodeid, u)
    if unit.opcode == Opcode.READDIRPLUS:
        for nodeid, _ in wire.direntplus_nodeids(raw):
            node_from.setdefault(nodeid, u)
    if unit.opcode in _OPEN_REPLIES:
        got = wire.open_out(unit.opcode, raw)
        if got is not None:
            fh_from[got[0]] = u
