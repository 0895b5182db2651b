"""Replies (server → kernel): every reply kind of `layouts.REPLIES` round-trips, a few byte
for byte. A reply carries no opcode: each decodes with `FuseContext().for_reply(opcode)`.
"""

from __future__ import annotations

import struct

import pytest

from dissector_checks import assert_roundtrip, assert_same_fields
from dissector_corpus import CTX, Case, entry, reply_cases
from dissectors import FuseContext, FuseOutHeader, FuseRaw, Opcode, decode_reply
from dissectors.constants import (
    FOPEN_PARALLEL_DIRECT_WRITES,
    FOPEN_PASSTHROUGH,
    FUSE_INIT_EXT,
    FUSE_MAX_PAGES,
    FUSE_PASSTHROUGH,
)
from dissectors.layouts import REPLIES
from dissectors.structs import (
    FuseAttr,
    FuseData,
    FuseDirent,
    FuseDirentplus,
    FuseDirentplusList,
    FuseEntryOut,
    FuseGetxattrOut,
    FuseInitOut,
    FuseOpenOut,
    FuseStatx,
    FuseStatxOut,
    FuseSxTime,
)

OUT = struct.Struct("<IiQ")  # struct fuse_out_header
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr, 88 bytes
ENTRY = struct.Struct("<QQQQII")  # struct fuse_entry_out without its attr
DIRENT = struct.Struct("<QQII")  # struct fuse_dirent without its name

CASES = reply_cases()


def test_every_reply_kind_has_a_case() -> None:
    covered = {c.ctx.opcode for c in CASES}
    assert covered == set(REPLIES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_roundtrip(case: Case) -> None:
    decoded = assert_roundtrip(case)
    assert decoded.answers(FuseOutHeader(unique=decoded.unique)) is False  # answers requests only


def check(pkt, expected: bytes, ctx: FuseContext) -> None:
    assert pkt.len is None
    assert bytes(pkt) == expected
    decoded = decode_reply(expected, ctx)
    assert not decoded.haslayer(FuseRaw), decoded[FuseRaw].reason
    assert_same_fields(pkt, decoded)
    assert bytes(decoded) == expected


def attr_bytes(ino: int, size: int, mode: int) -> bytes:
    return ATTR.pack(ino, size, 8, 1_700_000_000, 1_700_000_001, 1_700_000_002, 1, 2, 3, mode,
                     1, 1000, 1000, 0, 4096, 0)


def test_open_reply_with_backing_id_bytes() -> None:
    open_flags = FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_PASSTHROUGH
    expected = OUT.pack(32, 0, 14) + struct.pack("<QIi", 3, open_flags, 1)
    pkt = FuseOutHeader(unique=14) / FuseOpenOut(fh=3, open_flags=open_flags, backing_id=1)
    check(pkt, expected, CTX.for_reply(Opcode.OPEN))
    assert decode_reply(expected, CTX.for_reply(Opcode.OPEN))[FuseOpenOut].backing_id == 1


def test_open_reply_negative_backing_id() -> None:
    """backing_id is an int32_t: the sign survives."""
    raw = OUT.pack(32, 0, 14) + struct.pack("<QIi", 3, FOPEN_PASSTHROUGH, -1)
    assert decode_reply(raw, CTX.for_reply(Opcode.OPEN)).backing_id == -1


def test_readdirplus_reply_bytes() -> None:
    names = [b".", b"hello.txt"]
    expected_body = b""
    items = []
    for i, name in enumerate(names, start=1):
        mode = 0o40755 if name == b"." else 0o100644
        expected_body += ENTRY.pack(i, 1, 1, 1, 0, 500_000_000) + attr_bytes(i, 5, mode)
        pad = -(DIRENT.size + len(name)) % 8
        expected_body += DIRENT.pack(i, i, len(name), mode >> 12) + name + bytes(pad)
        items.append(FuseDirentplus(entry_out=entry(i, mode, 5),
                                    dirent=FuseDirent(ino=i, off=i, type=mode >> 12, name=name)))
    expected = OUT.pack(16 + len(expected_body), 0, 44) + expected_body
    pkt = FuseOutHeader(unique=44) / FuseDirentplusList(direntplus=items)
    check(pkt, expected, CTX.for_reply(Opcode.READDIRPLUS))
    decoded = decode_reply(expected, CTX.for_reply(Opcode.READDIRPLUS))
    got = [(d.entry_out.nodeid, d.entry_out.attr.mode, d.dirent.getfieldval("name"), d.dirent.namelen)
           for d in decoded.direntplus]
    assert got == [(1, 0o40755, b".", 1), (2, 0o100644, b"hello.txt", 9)]
    assert not decoded.direntplus[0].entry_out.payload  # the dirent is not swallowed as payload


def test_statx_reply_bytes() -> None:
    t = struct.pack("<qIi", 1_700_000_000, 5, 0)
    statx = (struct.pack("<IIQIIIH2xQQQQ", 0x7FF, 4096, 0, 1, 1000, 1000, 0o100644, 2, 5, 8, 0)
             + t * 4 + struct.pack("<IIII", 0, 0, 0, 42) + bytes(112))
    assert len(statx) == 256
    expected = OUT.pack(16 + 32 + 256, 0, 52) + struct.pack("<QII16x", 1, 0, 0) + statx
    when = FuseSxTime(tv_sec=1_700_000_000, tv_nsec=5)
    pkt = FuseOutHeader(unique=52) / FuseStatxOut(attr_valid=1, stat=FuseStatx(
        mask=0x7FF, blksize=4096, nlink=1, uid=1000, gid=1000, mode=0o100644, ino=2, size=5,
        blocks=8, atime=when, btime=when, ctime=when, mtime=when, dev_minor=42))
    check(pkt, expected, CTX.for_reply(Opcode.STATX))
    decoded = decode_reply(expected, CTX.for_reply(Opcode.STATX))
    assert decoded.stat.mtime.tv_sec == 1_700_000_000 and decoded.stat.mode == 0o100644


def test_init_reply_745_bytes() -> None:
    flags = FUSE_INIT_EXT | FUSE_MAX_PAGES | 1
    flags2 = FUSE_PASSTHROUGH >> 32
    expected = OUT.pack(80, 0, 1) + struct.pack(
        "<IIIIHHIIHHIIH22x", 7, 45, 131072, flags, 12, 9, 1 << 20, 1, 256, 0, flags2, 2, 30)
    pkt = FuseOutHeader(unique=1) / FuseInitOut(
        major=7, minor=45, max_readahead=131072, flags=flags, max_background=12,
        congestion_threshold=9, max_write=1 << 20, time_gran=1, max_pages=256, flags2=flags2,
        max_stack_depth=2, request_timeout=30)
    check(pkt, expected, CTX.for_reply(Opcode.INIT))
    decoded = decode_reply(expected, CTX.for_reply(Opcode.INIT))
    assert decoded.flags2 == 1 << 5 and decoded.max_stack_depth == 2


def test_getxattr_size_probe_and_data() -> None:
    """size 0 asks how big the value is (fuse_getxattr_out); size N gets the value itself."""
    size_reply = OUT.pack(24, 0, 22) + struct.pack("<II", 5, 0)
    probe = decode_reply(size_reply, FuseContext().for_reply(Opcode.GETXATTR, {"size": 0}))
    assert probe[FuseGetxattrOut].size == 5
    # The same 8 bytes answering a request for 64 bytes are the value.
    data = decode_reply(size_reply, FuseContext().for_reply(Opcode.GETXATTR, {"size": 64}))
    assert data[FuseData].data == struct.pack("<II", 5, 0) and not data.haslayer(FuseGetxattrOut)
    listed = decode_reply(OUT.pack(27, 0, 23) + b"user.color\0",
                          FuseContext().for_reply(Opcode.LISTXATTR, {"size": 4096}))
    assert listed[FuseData].data == b"user.color\0"


def test_error_reply_is_header_only() -> None:
    raw = OUT.pack(16, -2, 2)
    decoded = decode_reply(raw, CTX.for_reply(Opcode.LOOKUP))
    assert decoded.error == -2 and not decoded.payload
    # An error reply with a body is flagged, not decoded as an entry_out.
    decoded = decode_reply(OUT.pack(24, -2, 2) + bytes(8), CTX.for_reply(Opcode.LOOKUP))
    assert decoded.haslayer(FuseRaw) and decoded[FuseRaw].reason


def test_entry_out_nested_attr() -> None:
    raw = bytes(FuseOutHeader(unique=2) / entry(7, 0o100600, 123))
    decoded = decode_reply(raw, CTX.for_reply(Opcode.LOOKUP))
    assert isinstance(decoded[FuseEntryOut].attr, FuseAttr)
    assert (decoded.nodeid, decoded.attr.size, decoded.attr.mode) == (7, 123, 0o100600)


def test_reply_answers_its_request() -> None:
    from dissectors import FuseInHeader

    request = FuseInHeader(opcode=Opcode.LOOKUP, unique=77)
    reply = FuseOutHeader(unique=77)
    assert reply.answers(request) and not reply.answers(FuseInHeader(unique=78))
    assert reply.hashret() == request.hashret()
