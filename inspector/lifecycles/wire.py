"""The few fields the lifecycle pass reads, unpacked straight from message bytes.

Decoding every message through `dissectors.quick` would cost ~5 µs each; the pass reads
one or two words of a handful of messages, so it unpacks them at their fixed offsets.
Which words hold a file handle, and when, comes from the one table of ids
(`dissectors.ids`), at the offsets of the dissectors' own structs (tests/dissectors/test_ids.py
checks this view against the table).
"""

from __future__ import annotations

import struct
from typing import Iterator

from dissectors.constants import IN_HEADER_SIZE as IN, OUT_HEADER_SIZE as OUT, Opcode
from dissectors.context import DEFAULT_CONTEXT
from dissectors.ids import Id, field_offsets, id_fields
from dissectors.layouts import request_plan
from dissectors.quick import compiled
from dissectors.structs import FuseEntryOut

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id (Android: passthrough_fh, u32)
_FORGET_ONE = struct.Struct("<QQ")
_DIRENT = struct.Struct("<QQII")

#: fuse_entry_out (7.9+), alone in entry replies and at the head of each fuse_direntplus
ENTRY_OUT_SIZE = compiled(FuseEntryOut).st.size

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


#: Where the new entry's name starts in requests that create one (after their fixed struct).
_NAME_AT = {Opcode.LOOKUP: IN, Opcode.SYMLINK: IN, Opcode.MKDIR: IN + 8, Opcode.LINK: IN + 8,
            Opcode.MKNOD: IN + 16, Opcode.CREATE: IN + 16}


def entry_name(opcode: int, raw: bytes) -> str:
    """The name a LOOKUP/MKDIR/CREATE/... asks for ('' for others, or when cut)."""
    at = _NAME_AT.get(opcode)
    if at is None:
        return ""
    end = raw.find(b"\0", at)
    return raw[at:end].decode("utf-8", "backslashreplace") if end >= 0 else ""


def u64_at(raw: bytes, offset: int) -> int | None:
    return _U64.unpack_from(raw, offset)[0] if len(raw) >= offset + 8 else None


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
    at = OUT + (ENTRY_OUT_SIZE if opcode in (Opcode.CREATE, Opcode.TMPFILE) else 0)
    if len(raw) < at + _OPEN_OUT.size:
        return None
    fh, flags, backing = _OPEN_OUT.unpack_from(raw, at)
    return fh, flags, backing & 0xFFFFFFFF


def entry_nodeid(raw: bytes) -> int | None:
    """nodeid of the fuse_entry_out a LOOKUP/MKDIR/... reply starts with."""
    return u64_at(raw, OUT)


def forgets(opcode: int, raw: bytes, nodeid: int) -> Iterator[tuple[int, int]]:
    """(nodeid, nlookup) pairs of a FORGET or BATCH_FORGET."""
    if opcode == Opcode.FORGET:
        n = u64_at(raw, IN)
        if n is not None:
            yield nodeid, n
        return
    if len(raw) < IN + 8:
        return
    count = _U32.unpack_from(raw, IN)[0]
    off = IN + 8
    for _ in range(count):
        if len(raw) < off + 16:
            return
        yield _FORGET_ONE.unpack_from(raw, off)
        off += 16


def interrupted_unique(raw: bytes) -> int | None:
    return u64_at(raw, IN)


def direntplus_nodeids(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(nodeid, name) of each READDIRPLUS entry that gives the kernel a reference:
    nodeid not 0, name not "." or ".." (the kernel links neither)."""
    off, end = OUT, len(raw)
    while off + ENTRY_OUT_SIZE + _DIRENT.size <= end:
        nodeid = _U64.unpack_from(raw, off)[0]
        namelen = _DIRENT.unpack_from(raw, off + ENTRY_OUT_SIZE)[2]
        name_at = off + ENTRY_OUT_SIZE + _DIRENT.size
        if name_at + namelen > end:
            return
        name = raw[name_at:name_at + namelen]
        if nodeid and name not in (b".", b".."):
            yield nodeid, name
        off += ENTRY_OUT_SIZE + ((_DIRENT.size + namelen + 7) & ~7)
