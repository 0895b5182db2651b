"""The few fields the lifecycle pass reads, unpacked straight from message bytes.

Decoding every message through `dissectors.quick` would cost ~5 µs each; the pass reads
one or two words of a handful of messages, so it unpacks them at their fixed offsets
(struct layouts from include/uapi/linux/fuse.h, cross-checked against the dissectors'
classes in tests/lifecycles/test_wire.py).
"""

from __future__ import annotations

import struct
from typing import Iterator

from dissectors.constants import FATTR_FH, IN_HEADER_SIZE as IN, OUT_HEADER_SIZE as OUT, Opcode
from dissectors.quick import compiled
from dissectors.structs import FuseEntryOut

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id (Android: passthrough_fh, u32)
_FORGET_ONE = struct.Struct("<QQ")
_DIRENT = struct.Struct("<QQII")
_GETATTR_FH = 1

#: fuse_entry_out (7.9+), alone in entry replies and at the head of each fuse_direntplus
ENTRY_OUT_SIZE = compiled(FuseEntryOut).st.size

#: Requests whose body starts with the file handle (fuse_read_in.fh, fuse_release_in.fh …).
FH_FIRST = frozenset({
    Opcode.READ, Opcode.WRITE, Opcode.FLUSH, Opcode.FSYNC, Opcode.RELEASE,
    Opcode.RELEASEDIR, Opcode.READDIR, Opcode.READDIRPLUS, Opcode.FSYNCDIR, Opcode.LSEEK,
    Opcode.FALLOCATE, Opcode.IOCTL, Opcode.POLL, Opcode.GETLK, Opcode.SETLK,
    Opcode.SETLKW, Opcode.COPY_FILE_RANGE, Opcode.COPY_FILE_RANGE_64,
})


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
    """The file handles a request names (two for COPY_FILE_RANGE)."""
    if opcode in FH_FIRST:
        fh = u64_at(raw, IN)
        if fh is None:
            return ()
        if opcode in (Opcode.COPY_FILE_RANGE, Opcode.COPY_FILE_RANGE_64):
            out = u64_at(raw, IN + 24)  # fh_in, off_in, nodeid_out, fh_out
            return (fh,) if out is None else (fh, out)
        return (fh,)
    if opcode == Opcode.GETATTR and len(raw) >= IN + 16:
        flags = _U32.unpack_from(raw, IN)[0]
        return (_U64.unpack_from(raw, IN + 8)[0],) if flags & _GETATTR_FH else ()
    if opcode == Opcode.SETATTR and len(raw) >= IN + 16:
        valid = _U32.unpack_from(raw, IN)[0]
        return (_U64.unpack_from(raw, IN + 8)[0],) if valid & FATTR_FH else ()
    return ()


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
