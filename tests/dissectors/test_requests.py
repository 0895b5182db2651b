"""Requests (kernel → server): every opcode round-trips; a representative set byte for byte.

Expected bytes are written out with `struct.pack` from the C structs, not from the
dissectors, so a wrong field width or order fails here even when the round trip passes.
"""

from __future__ import annotations

import struct

import pytest

from dissector_checks import assert_roundtrip, assert_same_fields, decode
from dissector_corpus import CTX, Case, request_cases
from dissectors import FuseInHeader, FuseRaw, Opcode, decode_request
from dissectors.constants import FUSE_SETXATTR_EXT
from dissectors.context import FuseContext
from dissectors.structs import (
    FuseBatchForgetIn,
    FuseCreateIn,
    FuseData,
    FuseExtHeader,
    FuseExtensionList,
    FuseForgetList,
    FuseForgetOne,
    FuseInitIn,
    FuseMkdirIn,
    FuseName,
    FuseNames,
    FuseOpenIn,
    FuseReadIn,
    FuseRename2In,
    FuseSetxattrIn,
    FuseWriteIn,
)

IN = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header


def in_header(length: int, opcode: int, unique: int, nodeid: int, uid: int = 1000,
              gid: int = 1000, pid: int = 4242) -> bytes:
    return IN.pack(length, opcode, unique, nodeid, uid, gid, pid, 0, 0)


def hdr(opcode: int, unique: int, nodeid: int) -> FuseInHeader:
    return FuseInHeader(opcode=opcode, unique=unique, nodeid=nodeid, uid=1000, gid=1000, pid=4242)


CASES = request_cases()


def test_every_opcode_has_a_case() -> None:
    assert sorted(c.pkt.opcode for c in CASES) == sorted(Opcode)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_roundtrip(case: Case) -> None:
    assert_roundtrip(case)


def check(pkt, expected: bytes, ctx: FuseContext = CTX) -> None:
    """Built bytes equal the hand-packed ones; the hand-packed ones decode to the same fields."""
    assert pkt.len is None
    assert bytes(pkt) == expected
    decoded = decode_request(expected, ctx)
    assert not decoded.haslayer(FuseRaw), decoded[FuseRaw].reason
    assert_same_fields(pkt, decoded)
    assert bytes(decoded) == expected


def test_lookup_bytes() -> None:
    body = b"hello.txt\0"
    check(hdr(Opcode.LOOKUP, 2, 1) / FuseName(name=b"hello.txt"),
          in_header(40 + len(body), 1, 2, 1) + body)


def test_open_bytes() -> None:
    flags = 0o100002  # O_RDWR|O_LARGEFILE as an x86-64 kernel sends it
    check(hdr(Opcode.OPEN, 14, 2) / FuseOpenIn(flags=flags, open_flags=1),
          in_header(48, 14, 14, 2) + struct.pack("<II", flags, 1))


def test_read_bytes() -> None:
    body = struct.pack("<QQIIQII", 3, 4096, 4096, 2, 0xABCD, 0o100000, 0)
    check(hdr(Opcode.READ, 15, 2) / FuseReadIn(fh=3, offset=4096, size=4096, read_flags=2,
                                               lock_owner=0xABCD, flags=0o100000),
          in_header(80, 15, 15, 2) + body)


def test_write_bytes() -> None:
    body = struct.pack("<QQIIQII", 3, 8192, 5, 1, 0, 0o100001, 0) + b"hello"
    check(hdr(Opcode.WRITE, 16, 2) / FuseWriteIn(fh=3, offset=8192, size=5, write_flags=1,
                                                 flags=0o100001) / FuseData(data=b"hello"),
          in_header(85, 16, 16, 2) + body)


def test_init_bytes() -> None:
    flags, flags2 = 0x73FFFFFB, 0xFF
    body = struct.pack("<IIIII", 7, 45, 131072, flags, flags2) + bytes(44)
    check(hdr(Opcode.INIT, 1, 0) / FuseInitIn(major=7, minor=45, max_readahead=131072,
                                              flags=flags, flags2=flags2),
          in_header(104, 26, 1, 0) + body)


def test_create_bytes() -> None:
    body = struct.pack("<IIII", 0o100102, 0o100644, 0o022, 0) + b"new.txt\0"
    check(hdr(Opcode.CREATE, 35, 1) / FuseCreateIn(flags=0o100102, mode=0o100644, umask=0o022)
          / FuseName(name=b"new.txt"),
          in_header(40 + len(body), 35, 35, 1) + body)


def test_rename2_bytes() -> None:
    body = struct.pack("<QII", 5, 2, 0) + b"a\0b\0"  # RENAME_EXCHANGE
    pkt = hdr(Opcode.RENAME2, 45, 1) / FuseRename2In(newdir=5, flags=2) / FuseNames(name=b"a", name2=b"b")
    check(pkt, in_header(40 + len(body), 45, 45, 1) + body)
    names = decode_request(bytes(pkt), CTX)[FuseNames]
    assert (names.getfieldval("name"), names.name2) == (b"a", b"b")


def test_setxattr_ext_bytes() -> None:
    body = struct.pack("<IIII", 5, 1, 1, 0) + b"user.color\0" + b"green"
    check(hdr(Opcode.SETXATTR, 21, 2) / FuseSetxattrIn(size=5, flags=1, setxattr_flags=1)
          / FuseName(name=b"user.color") / FuseData(data=b"green"),
          in_header(40 + len(body), 21, 21, 2) + body, FuseContext(flags=FUSE_SETXATTR_EXT))


def test_batch_forget_bytes() -> None:
    body = struct.pack("<II", 2, 0) + struct.pack("<QQ", 2, 1) + struct.pack("<QQ", 3, 7)
    pkt = hdr(Opcode.BATCH_FORGET, 42, 0) / FuseBatchForgetIn() / FuseForgetList(
        forgets=[FuseForgetOne(nodeid=2, nlookup=1), FuseForgetOne(nodeid=3, nlookup=7)])
    assert pkt[FuseBatchForgetIn].count is None  # count filled from the list
    check(pkt, in_header(40 + len(body), 42, 42, 0) + body)
    decoded = decode_request(bytes(pkt))
    assert decoded.count == 2 and [f.nodeid for f in decoded.forgets] == [2, 3]


def test_extensions_after_args() -> None:
    """7.38: total_extlen counts 8-byte units of extensions after the arguments."""
    ext = struct.pack("<II", 16, 32) + struct.pack("<II", 1, 1000)  # FUSE_EXT_GROUPS, one gid
    body = struct.pack("<II", 0o755, 0o022) + b"dir\0" + ext  # args are not padded
    raw = IN.pack(40 + len(body), 9, 9, 1, 1000, 1000, 4242, len(ext) // 8, 0) + body
    decoded = decode_request(raw)
    assert decoded.total_extlen == 2
    assert not decoded.haslayer(FuseRaw)
    assert decoded[FuseName].getfieldval("name") == b"dir"
    (group,) = decoded[FuseExtensionList].extensions
    assert (group.size, group.type, group.data) == (16, 32, struct.pack("<II", 1, 1000))
    assert bytes(decoded) == raw
    built = hdr(Opcode.MKDIR, 9, 1) / FuseMkdirIn(mode=0o755, umask=0o022) / FuseName(name=b"dir") \
        / FuseExtensionList(extensions=[FuseExtHeader(type=32, data=struct.pack("<II", 1, 1000))])
    built.total_extlen = 2
    assert bytes(built) == raw


def test_len_is_filled_and_kept() -> None:
    pkt = hdr(Opcode.LOOKUP, 2, 1) / FuseName(name=b"x")
    assert pkt.len is None and bytes(pkt)[:4] == (42).to_bytes(4, "little")
    forced = hdr(Opcode.LOOKUP, 2, 1) / FuseName(name=b"x")
    forced.len = 99  # an explicit len is kept, even when wrong
    assert bytes(forced)[:4] == (99).to_bytes(4, "little")


def test_trailing_junk_is_padding_not_body() -> None:
    """Bytes after `len` belong to no message: they must not change the decoded body."""
    raw = bytes(hdr(Opcode.LOOKUP, 2, 1) / FuseName(name=b"x"))
    decoded = decode_request(raw + b"JUNK")
    assert decoded[FuseName].getfieldval("name") == b"x"
    assert bytes(decoded) == raw + b"JUNK"  # kept as Scapy padding


def test_case_ids_decode_to_their_opcode() -> None:
    for case in CASES:
        assert decode(case).opcode == case.pkt.opcode
