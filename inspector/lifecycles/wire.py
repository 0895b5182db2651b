"""The few fields the lifecycle pass reads, unpacked straight from message bytes.

Decoding every message through `dissectors.quick` would cost ~5 µs each; the pass reads
one or two words of a handful of messages, so it unpacks them at their fixed offsets.
Every offset is the dissectors' (`dissectors.offsets`, from the structs; where a body's
struct changed size across minors, from the plan of the negotiated minor), and which
words hold a file handle, and when, comes from the one table of ids (`dissectors.ids`;
tests/dissectors/test_ids.py checks this view against the table).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Iterator

from dissectors.constants import Opcode
from dissectors.context import DEFAULT_CONTEXT, FuseContext
from dissectors.flat import compiled, fixed_head
from dissectors.ids import Id, id_fields
from dissectors.layouts import fixed_size_before, request_plan
from dissectors.offsets import IN_HEADER_SIZE as IN, OUT_HEADER_SIZE as OUT
from dissectors.offsets import field_offsets, offset, reader
from dissectors.opcodes import ENTRY_REPLIES, OPEN_REPLIES
from dissectors.structs import (
    FuseBatchForgetIn,
    FuseDirent,
    FuseEntryOut,
    FuseForgetIn,
    FuseForgetOne,
    FuseInterruptIn,
    FuseName,
    FuseNames,
    FuseOpenOut,
    FuseOpenOutAndroid,
    dirent_size,
)

__all__ = ["ENTRY_OUT_SIZE", "FH_FIRST", "FH_SLOTS", "IN", "OUT", "direntplus_nodeids",
           "entry_name", "entry_nodeid", "first_fh", "forgets", "interrupted_unique",
           "open_out", "request_fhs"]

#: fuse_entry_out (7.9+), alone in entry replies and at the head of each fuse_direntplus
ENTRY_OUT_SIZE = compiled(FuseEntryOut).st.size
_ENTRY_NODEID = reader(FuseEntryOut, "nodeid")
_OPEN_OUT = reader(FuseOpenOut, "fh", "open_flags", "backing_id")
if offset(FuseOpenOut, "backing_id") != offset(FuseOpenOutAndroid, "passthrough_fh"):
    raise ImportError("open_out() reads Android's passthrough_fh where backing_id is")
#: where fuse_open_out starts in the replies that carry one (after CREATE's fuse_entry_out)
_OPEN_OUT_AT = {op: OUT + fixed_size_before(FuseOpenOut, "reply", op) for op in OPEN_REPLIES}
_NLOOKUP = reader(FuseForgetIn, "nlookup")
_BATCH_COUNT = reader(FuseBatchForgetIn, "count")
_BATCH_SIZE = compiled(FuseBatchForgetIn).st.size
_FORGET_ONE = reader(FuseForgetOne, "nodeid", "nlookup")
_INTERRUPTED = reader(FuseInterruptIn, "unique")
_DIRENT_SIZE = fixed_head(FuseDirent).st.size
_DIRENT_NAMELEN = reader(FuseDirent, "namelen")

#: (offset, its struct, condition: (offset, struct, bit) of the flag word, or None)
FhSlot = tuple[int, struct.Struct, tuple[int, struct.Struct, int] | None]


def _fh_slots() -> dict[int, tuple[FhSlot, ...]]:
    """opcode → where its requests carry file handles: the id table's FH fields of the
    request's first struct (every FH field is in one), at the current protocol's layout."""
    out: dict[int, tuple[FhSlot, ...]] = {}
    for opcode in Opcode:
        plan, _ = request_plan(DEFAULT_CONTEXT, opcode, 0, bytes(4096))
        if not plan:
            continue
        first, slots = plan[0], []
        offsets = field_offsets(first)
        for idf in id_fields(first):
            if idf.kind is not Id.FH or (idf.opcodes is not None and opcode not in idf.opcodes):
                continue
            at, code = offsets[idf.field]
            cond = None
            if idf.when is not None:
                flag_at, flag_code = offsets[idf.when[0]]
                cond = (IN + flag_at, struct.Struct(flag_code), idf.when[1])
            slots.append((IN + at, struct.Struct(code), cond))
        if slots:
            out[opcode] = tuple(slots)
    return out


FH_SLOTS = _fh_slots()
#: Requests whose body starts with the file handle, whatever their flags
#: (fuse_read_in.fh, fuse_release_in.fh …).
FH_FIRST = frozenset(op for op, slots in FH_SLOTS.items()
                     if any(at == IN and cond is None for at, _, cond in slots))
_FIRST_FH = next(st for slots in FH_SLOTS.values() for at, st, cond in slots
                 if at == IN and cond is None)


def first_fh(raw: bytes) -> int | None:
    """The handle a request of FH_FIRST names (None when cut)."""
    return _FIRST_FH.unpack_from(raw, IN)[0] if len(raw) >= IN + _FIRST_FH.size else None


@lru_cache(maxsize=None)
def _name_at(opcode: int, minor: int) -> int | None:
    """Where the new entry's name starts in a request that creates one, at this minor
    (MKNOD's and CREATE's structs were shorter before 7.12)."""
    ctx = FuseContext(minor=minor)
    plan, _ = request_plan(ctx, opcode, 0, bytes(4096))
    for layer in (FuseName, FuseNames):
        if layer in plan:
            return IN + fixed_size_before(layer, "request", opcode, ctx)
    return None


def entry_name(opcode: int, raw: bytes, minor: int = DEFAULT_CONTEXT.minor) -> str:
    """The name a LOOKUP/MKDIR/CREATE/... asks for ('' for others, or when cut)."""
    at = _name_at(opcode, minor) if opcode in ENTRY_REPLIES else None
    if at is None:
        return ""
    end = raw.find(b"\0", at)
    return raw[at:end].decode("utf-8", "backslashreplace") if end >= 0 else ""


def _at(st: struct.Struct, raw: bytes, at: int) -> int | None:
    return st.unpack_from(raw, at)[0] if len(raw) >= at + st.size else None


def request_fhs(opcode: int, raw: bytes) -> tuple[int, ...]:
    """The file handles a request names (two for COPY_FILE_RANGE; GETATTR's and STATX's
    only with FUSE_GETATTR_FH, SETATTR's only with FATTR_FH)."""
    out = []
    for at, st, cond in FH_SLOTS.get(opcode, ()):
        if len(raw) < at + st.size:
            continue
        if cond is not None:
            flag_at, flag, bit = cond
            if len(raw) < flag_at + flag.size or not flag.unpack_from(raw, flag_at)[0] & bit:
                continue
        out.append(st.unpack_from(raw, at)[0])
    return tuple(out)


def open_out(opcode: int, raw: bytes) -> tuple[int, int, int] | None:
    """(fh, open_flags, backing id as unsigned 32 bits) of an OPEN/OPENDIR reply's
    fuse_open_out, or of the one after CREATE/TMPFILE's fuse_entry_out."""
    at = _OPEN_OUT_AT.get(opcode)
    if at is None or len(raw) < at + _OPEN_OUT.size:
        return None
    fh, flags, backing = _OPEN_OUT.unpack_from(raw, at)
    return fh, flags, backing & 0xFFFFFFFF


def entry_nodeid(raw: bytes) -> int | None:
    """nodeid of the fuse_entry_out a LOOKUP/MKDIR/... reply starts with."""
    return _at(_ENTRY_NODEID, raw, OUT)


def forgets(opcode: int, raw: bytes, nodeid: int) -> Iterator[tuple[int, int]]:
    """(nodeid, nlookup) pairs of a FORGET or BATCH_FORGET."""
    if opcode == Opcode.FORGET:
        n = _at(_NLOOKUP, raw, IN)
        if n is not None:
            yield nodeid, n
        return
    count = _at(_BATCH_COUNT, raw, IN)
    off = IN + _BATCH_SIZE
    for _ in range(count or 0):
        if len(raw) < off + _FORGET_ONE.size:
            return
        yield _FORGET_ONE.unpack_from(raw, off)
        off += _FORGET_ONE.size


def interrupted_unique(raw: bytes) -> int | None:
    return _at(_INTERRUPTED, raw, IN)


def direntplus_nodeids(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(nodeid, name) of each READDIRPLUS entry that gives the kernel a reference:
    nodeid not 0, name not "." or ".." (the kernel links neither)."""
    off, end = OUT, len(raw)
    while off + ENTRY_OUT_SIZE + _DIRENT_SIZE <= end:
        nodeid = _ENTRY_NODEID.unpack_from(raw, off)[0]
        namelen = _DIRENT_NAMELEN.unpack_from(raw, off + ENTRY_OUT_SIZE)[0]
        name_at = off + ENTRY_OUT_SIZE + _DIRENT_SIZE
        if name_at + namelen > end:
            return
        name = raw[name_at:name_at + namelen]
        if nodeid and name not in (b".", b".."):
            yield nodeid, name
        off += ENTRY_OUT_SIZE + dirent_size(namelen)
