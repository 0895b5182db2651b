"""Older protocol minors: the sizes the kernel still accepts (FUSE_COMPAT_*_SIZE) decode as
their compat structs, byte for byte, and the wrong size for the minor is flagged.
"""

from __future__ import annotations

import struct

import pytest

from dissector_checks import assert_same_fields, layers
from dissectors import FuseContext, FuseInHeader, FuseOutHeader, FuseRaw, Opcode, decode_reply, decode_request
from dissectors.constants import (
    FUSE_COMPAT_22_INIT_OUT_SIZE,
    FUSE_COMPAT_ATTR_OUT_SIZE,
    FUSE_COMPAT_ENTRY_OUT_SIZE,
    FUSE_COMPAT_INIT_IN_SIZE,
    FUSE_COMPAT_INIT_OUT_SIZE,
    FUSE_COMPAT_MKNOD_IN_SIZE,
    FUSE_COMPAT_SETXATTR_IN_SIZE,
    FUSE_COMPAT_STATFS_SIZE,
    FUSE_COMPAT_WRITE_IN_SIZE,
    FUSE_SETXATTR_EXT,
)
from dissectors.layouts import struct_size
from dissectors.structs import (
    FuseAttrCompat,
    FuseAttrOutCompat,
    FuseCreateInCompat,
    FuseData,
    FuseEntryOut,
    FuseEntryOutCompat,
    FuseInitIn,
    FuseInitInCompat,
    FuseInitOutCompat,
    FuseInitOutCompat22,
    FuseKstatfsCompat,
    FuseMknodInCompat,
    FuseName,
    FuseReadInCompat,
    FuseSetxattrIn,
    FuseSetxattrInCompat,
    FuseStatfsOutCompat,
    FuseWriteInCompat,
)

IN = struct.Struct("<IIQQIIIHH")
OUT = struct.Struct("<IiQ")
ATTR_78 = struct.Struct("<QQQQQQIIIIIIII")  # fuse_attr before 7.9: no blksize, no padding


def in_header(length: int, opcode: int, unique: int, nodeid: int) -> bytes:
    return IN.pack(length, opcode, unique, nodeid, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("cls, size", [
    (FuseEntryOutCompat, FUSE_COMPAT_ENTRY_OUT_SIZE),
    (FuseAttrOutCompat, FUSE_COMPAT_ATTR_OUT_SIZE),
    (FuseMknodInCompat, FUSE_COMPAT_MKNOD_IN_SIZE),
    (FuseWriteInCompat, FUSE_COMPAT_WRITE_IN_SIZE),
    (FuseStatfsOutCompat, FUSE_COMPAT_STATFS_SIZE),
    (FuseSetxattrInCompat, FUSE_COMPAT_SETXATTR_IN_SIZE),
    (FuseInitOutCompat, FUSE_COMPAT_INIT_OUT_SIZE),
    (FuseInitOutCompat22, FUSE_COMPAT_22_INIT_OUT_SIZE),
    (FuseInitInCompat, FUSE_COMPAT_INIT_IN_SIZE),
    (FuseReadInCompat, 24),
    (FuseCreateInCompat, 8),
])
def test_compat_sizes(cls, size: int) -> None:
    assert struct_size(cls) == len(bytes(cls())) == size


def roundtrip(raw: bytes, request: bool, ctx: FuseContext, want: list[type]) -> None:
    decoded = decode_request(raw, ctx) if request else decode_reply(raw, ctx)
    assert not decoded.haslayer(FuseRaw), decoded[FuseRaw].reason
    assert [type(x) for x in layers(decoded)][1:] == want
    assert bytes(decoded) == raw


def test_init_reply_8_bytes() -> None:
    """Before 7.5 the reply held major and minor only."""
    raw = OUT.pack(24, 0, 1) + struct.pack("<II", 7, 4)
    pkt = FuseOutHeader(unique=1) / FuseInitOutCompat(major=7, minor=4)
    assert bytes(pkt) == raw
    roundtrip(raw, False, FuseContext().for_reply(Opcode.INIT), [FuseInitOutCompat])


def test_init_reply_24_bytes() -> None:
    raw = OUT.pack(40, 0, 1) + struct.pack("<IIIIHHI", 7, 22, 65536, 1, 12, 9, 131072)
    pkt = FuseOutHeader(unique=1) / FuseInitOutCompat22(minor=22, max_readahead=65536, flags=1,
                                                        max_background=12, congestion_threshold=9,
                                                        max_write=131072)
    assert bytes(pkt) == raw
    roundtrip(raw, False, FuseContext().for_reply(Opcode.INIT), [FuseInitOutCompat22])
    assert decode_reply(raw, FuseContext().for_reply(Opcode.INIT)).max_write == 131072


def test_init_reply_between_sizes_keeps_the_rest_visible() -> None:
    """A 7.23..7.35 server sends 64 bytes; something between 24 and 64 is not silently cut."""
    raw = OUT.pack(16 + 40, 0, 1) + struct.pack("<IIIIHHII", 7, 30, 0, 0, 0, 0, 4096, 1) + bytes(12)
    decoded = decode_reply(raw, FuseContext().for_reply(Opcode.INIT))
    assert decoded.haslayer(FuseInitOutCompat22) and decoded.haslayer(FuseRaw)
    assert decoded[FuseRaw].reason and bytes(decoded) == raw


def test_init_request_16_bytes() -> None:
    """Kernels before 7.36 send fuse_init_in without flags2 and the reserved words."""
    raw = in_header(56, 26, 1, 0) + struct.pack("<IIII", 7, 35, 131072, 0x3FFFFFFB)
    pkt = FuseInHeader(opcode=Opcode.INIT, unique=1) / FuseInitInCompat(minor=35, max_readahead=131072,
                                                                         flags=0x3FFFFFFB)
    assert bytes(pkt) == raw
    roundtrip(raw, True, FuseContext(), [FuseInitInCompat])
    full = in_header(104, 26, 1, 0) + struct.pack("<IIIII", 7, 45, 0, 0, 0) + bytes(44)
    roundtrip(full, True, FuseContext(), [FuseInitIn])


def test_entry_out_minor_8() -> None:
    attr = ATTR_78.pack(5, 10, 1, 2, 3, 4, 0, 0, 0, 0o100644, 1, 0, 0, 0)
    raw = OUT.pack(16 + 120, 0, 2) + struct.pack("<QQQQII", 5, 1, 1, 1, 0, 0) + attr
    ctx = FuseContext(minor=8, minor_known=True).for_reply(Opcode.LOOKUP)
    pkt = FuseOutHeader(unique=2) / FuseEntryOutCompat(
        nodeid=5, generation=1, entry_valid=1, attr_valid=1,
        attr=FuseAttrCompat(ino=5, size=10, blocks=1, atime=2, mtime=3, ctime=4, mode=0o100644, nlink=1))
    assert bytes(pkt) == raw
    roundtrip(raw, False, ctx, [FuseEntryOutCompat])
    assert_same_fields(pkt, decode_reply(raw, ctx))
    # The same bytes in a 7.45 session are too short for fuse_entry_out: flagged, not guessed.
    flagged = decode_reply(raw, FuseContext().for_reply(Opcode.LOOKUP))
    assert not flagged.haslayer(FuseEntryOut) and b"short" in flagged[FuseRaw].reason


def test_attr_out_minor_8() -> None:
    attr = ATTR_78.pack(5, 10, 1, 2, 3, 4, 0, 0, 0, 0o40755, 2, 0, 0, 0)
    raw = OUT.pack(16 + 96, 0, 4) + struct.pack("<QII", 1, 0, 0) + attr
    ctx = FuseContext(minor=8, minor_known=True).for_reply(Opcode.GETATTR)
    roundtrip(raw, False, ctx, [FuseAttrOutCompat])
    assert decode_reply(raw, ctx).attr.mode == 0o40755


def test_getattr_request_minor_8_has_no_body() -> None:
    raw = in_header(40, 3, 4, 2)
    roundtrip(raw, True, FuseContext(minor=8, minor_known=True), [])


def test_statfs_reply_minor_3() -> None:
    raw = OUT.pack(16 + 48, 0, 9) + struct.pack("<QQQQQII", 100, 50, 40, 10, 5, 4096, 255)
    ctx = FuseContext(minor=3, minor_known=True).for_reply(Opcode.STATFS)
    roundtrip(raw, False, ctx, [FuseStatfsOutCompat])
    assert isinstance(decode_reply(raw, ctx).st, FuseKstatfsCompat)


def test_mknod_minor_11() -> None:
    raw = in_header(40 + 8 + 5, 8, 8, 1) + struct.pack("<II", 0o10644, 0) + b"fifo\0"
    pkt = FuseInHeader(opcode=Opcode.MKNOD, unique=8, nodeid=1) / FuseMknodInCompat(mode=0o10644) \
        / FuseName(name=b"fifo")
    assert bytes(pkt) == raw
    ctx = FuseContext(minor=11, minor_known=True)
    roundtrip(raw, True, ctx, [FuseMknodInCompat, FuseName])
    assert decode_request(raw, ctx).mode == 0o10644


def test_create_minor_11() -> None:
    """Before 7.12 CREATE carried a fuse_open_in (flags, mode in place of unused)."""
    raw = in_header(40 + 8 + 4, 35, 9, 1) + struct.pack("<II", 0o100102, 0o100644) + b"new\0"
    pkt = FuseInHeader(opcode=Opcode.CREATE, unique=9, nodeid=1) / FuseCreateInCompat(
        flags=0o100102, mode=0o100644) / FuseName(name=b"new")
    assert bytes(pkt) == raw
    ctx = FuseContext(minor=11, minor_known=True)
    roundtrip(raw, True, ctx, [FuseCreateInCompat, FuseName])
    assert decode_request(raw, ctx)[FuseName].getfieldval("name") == b"new"


def test_write_in_minor_8() -> None:
    raw = in_header(40 + 24 + 3, 16, 10, 2) + struct.pack("<QQII", 3, 0, 3, 0) + b"abc"
    pkt = FuseInHeader(opcode=Opcode.WRITE, unique=10, nodeid=2) / FuseWriteInCompat(fh=3, size=3) \
        / FuseData(data=b"abc")
    assert bytes(pkt) == raw
    ctx = FuseContext(minor=8, minor_known=True)
    roundtrip(raw, True, ctx, [FuseWriteInCompat, FuseData])
    assert decode_request(raw, ctx).data == b"abc"


def test_setxattr_with_and_without_ext() -> None:
    tail = b"user.k\0" + b"val"
    compat = in_header(40 + 8 + len(tail), 21, 11, 2) + struct.pack("<II", 3, 0) + tail
    ext = in_header(40 + 16 + len(tail), 21, 11, 2) + struct.pack("<IIII", 3, 0, 1, 0) + tail
    without, with_ext = FuseContext(), FuseContext(flags=FUSE_SETXATTR_EXT)
    roundtrip(compat, True, without, [FuseSetxattrInCompat, FuseName, FuseData])
    roundtrip(ext, True, with_ext, [FuseSetxattrIn, FuseName, FuseData])
    assert decode_request(ext, with_ext).setxattr_flags == 1
    assert decode_request(compat, without).data == b"val"
    # The other context would misread the name as fields: it must not decode cleanly as ext.
    wrong = decode_request(compat, with_ext)
    assert not (wrong.haslayer(FuseName) and wrong[FuseName].getfieldval("name") == b"user.k")
