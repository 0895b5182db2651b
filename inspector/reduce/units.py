"""A trace cut into exchanges, each with the exchanges it needs, and written back out.

Which words of a request are node ids and file handles is the live target's view of the
one table of ids (`inspector.target.layout`, at the trace's negotiated minor): the
header's nodeid, RENAME's `newdir`, LINK's `oldnodeid`, COPY_FILE_RANGE's `nodeid_out`,
BATCH_FORGET's entries and every handle. A request needs the latest exchange that handed
out each id it names; a FORGET, every one that gave a lookup it drops (so no candidate
forgets more than it looked up); an open, its release (so no candidate forgets a node
while a file is open on it); an UNLINK, RMDIR or RENAME, the latest exchange that gave the
kernel the entry it names (the kernel removes or moves only what it looked up). What a reply hands out is read as the lifecycle pass
reads it (`inspector.lifecycles.wire`). A dependency missed here only costs replays
(a candidate missing it fails differently and is dropped), never correctness.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from dissectors import SessionDecoder
from dissectors.constants import FUSE_ROOT_ID, Opcode
from inspector.lifecycles import wire
from inspector.target.layout import IN_HEADER, OUT_HEADER, Layout
from dissectors.opcodes import ENTRY_REPLIES, FORGETS, OPEN_REPLIES, RELEASES, REMOVES, RENAMES
from traces import Kind, Record, TraceReader, TraceReadError, TraceWriter

_BY_NAME = REMOVES | RENAMES  # requests that name an entry of their node's directory


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
    owner: dict[int, int]  # record index → its unit

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

    def write(self, path: str | os.PathLike[str], units: Iterable[int]) -> list[int]:
        """The candidate as an ordinary trace: kept records in their recorded order;
        returns their indices in this trace (the new trace's records, in order)."""
        keep = set(self.always)
        for u in units:
            keep.update(self.units[u].records)
        kept = sorted(keep)
        with TraceWriter(path, dict(self.header)) as out:
            for i in kept:
                out.copy(self.records[i])
        return kept

    def unit_of(self, record: int) -> int | None:
        """The unit a record belongs to."""
        return self.owner.get(record)




def cut(path: str | os.PathLike[str]) -> Cut:
    """Read `path` (TraceReadError on bad input) and cut it into units."""
    with TraceReader(path) as reader:
        header = {k: v for k, v in reader.header.items() if k not in ("magic", "format")}
        records = list(reader)
        tail = reader.tail
    if tail:  # the damaged-trace rule (inspector.damaged): replays need the whole session
        raise TraceReadError(f"{path}: {tail}; a replay needs the whole trace")
    layout = _layout(records)
    units: list[Unit] = []
    always: list[int] = []
    by_unique: dict[int, int] = {}  # unique → unit of the request still waiting
    node_from: dict[int, list[int]] = {}  # node id → units whose replies handed it out
    fh_from: dict[int, int] = {}
    child_from: dict[tuple[int, bytes], int] = {}  # (directory, name) → unit that gave it
    pending_ioctls: list[int] = []
    for rec in records:
        raw = rec.raw or b""
        if rec.kind is Kind.REQUEST and len(raw) >= IN_HEADER.size:
            _, opcode, unique, *_ = IN_HEADER.unpack_from(raw)
            unit = Unit(opcode, [rec.index])
            for _, nodeid in layout.node_words(opcode, raw):
                if nodeid not in (0, FUSE_ROOT_ID) and nodeid in node_from:
                    # a FORGET needs every lookup it drops; a use, the latest one
                    given = node_from[nodeid]
                    unit.needs.update(given if opcode in FORGETS else given[-1:])
            for _, fh in layout.fh_words(opcode, raw):
                if fh in fh_from:
                    unit.needs.add(fh_from[fh])
                    if opcode in RELEASES:  # an open keeps its release: until then the
                        units[fh_from[fh]].needs.add(len(units))  # file holds its node
            if opcode in _BY_NAME:  # the kernel removes or moves what it looked up
                named = (IN_HEADER.unpack_from(raw)[3], _first_name(layout, opcode, raw))
                if named in child_from:
                    unit.needs.add(child_from[named])
            if opcode == Opcode.INTERRUPT:
                target = wire.interrupted_unique(raw)
                if target in by_unique:
                    unit.needs.add(by_unique[target])
            units.append(unit)
            by_unique[unique] = len(units) - 1
        elif rec.kind is Kind.REPLY and len(raw) >= OUT_HEADER.size:
            _, error, unique, = OUT_HEADER.unpack_from(raw)
            u = by_unique.pop(unique, None) if unique else None
            if u is None:
                always.append(rec.index)
                continue
            unit = units[u]
            unit.records += pending_ioctls + [rec.index]
            pending_ioctls = []
            if error == 0:
                _given(unit, u, raw, node_from, fh_from)
                request = records[unit.records[0]].raw or b""
                parent = IN_HEADER.unpack_from(request)[3]
                if unit.opcode in ENTRY_REPLIES:
                    child_from[(parent, _first_name(layout, unit.opcode, request))] = u
                elif unit.opcode == Opcode.READDIRPLUS:
                    for _, name in wire.direntplus_nodeids(raw):
                        child_from[(parent, name)] = u
        elif rec.kind is Kind.IOCTL and units:
            pending_ioctls.append(rec.index)  # made for the exchange the next reply ends
        else:
            always.append(rec.index)
    always += pending_ioctls
    fixed = {i for i, u in enumerate(units) if u.opcode == Opcode.INIT}
    owner = {r: i for i, u in enumerate(units) for r in u.records}
    return Cut(header, records, units, sorted(always), fixed, owner)


def _first_name(layout: Layout, opcode: int, raw: bytes) -> bytes:
    named = layout.names.get(opcode)
    if named is None:
        return b""
    end = raw.find(b"\0", named[0])
    return raw[named[0]:end if end >= 0 else len(raw)]


def _layout(records: list[Record]) -> Layout:
    """The request layouts at the minor and flags the trace's INIT negotiated."""
    decoder = SessionDecoder()
    init: int | None = None
    for rec in records:
        raw = rec.raw or b""
        if rec.kind is Kind.REQUEST and len(raw) >= IN_HEADER.size and init is None:
            if IN_HEADER.unpack_from(raw)[1] == Opcode.INIT:
                decoder.feed_request(raw)
                init = IN_HEADER.unpack_from(raw)[2]
        elif (rec.kind is Kind.REPLY and init is not None and len(raw) >= OUT_HEADER.size
              and OUT_HEADER.unpack_from(raw)[2] == init):
            decoder.feed_reply(raw)
            break
    return Layout(decoder.ctx)


def _given(unit: Unit, u: int, raw: bytes, node_from: dict[int, list[int]],
           fh_from: dict[int, int]) -> None:
    """Record the node ids and handles a successful reply hands out."""
    if unit.opcode in ENTRY_REPLIES:
        nodeid = wire.entry_nodeid(raw)
        if nodeid:
            node_from.setdefault(nodeid, []).append(u)
    if unit.opcode == Opcode.READDIRPLUS:
        for nodeid, _ in wire.direntplus_nodeids(raw):
            node_from.setdefault(nodeid, []).append(u)
    if unit.opcode in OPEN_REPLIES:
        got = wire.open_out(unit.opcode, raw)
        if got is not None:
            fh_from[got[0]] = u
