"""/dev/fuse ioctls: numbers, argument structs per dialect, names, and bad arguments."""

from __future__ import annotations

import struct

import pytest

from dissectors import (
    DevIoctl,
    Dialect,
    FuseBackingMap,
    FusePassthroughOut,
    dissect_ioctl_arg,
    ioctl_name,
)
from dissectors.ioctls import FuseIoctlRaw, FuseIoctlU32, ioctl_arg_fields


def ioc(direction: int, nr: int, size: int) -> int:
    """asm-generic/ioctl.h encoding (x86-64, arm64): dir:2 size:14 type:8 nr:8."""
    return direction << 30 | size << 16 | 229 << 8 | nr


#: The numbers from the headers' macros, worked out by hand.
NUMBERS = {
    DevIoctl.CLONE: (0x8004E500, ioc(2, 0, 4)),  # _IOR(229, 0, uint32_t)
    DevIoctl.BACKING_OPEN: (0x4010E501, ioc(1, 1, 16)),  # _IOW(229, 1, struct fuse_backing_map)
    DevIoctl.BACKING_CLOSE: (0x4004E502, ioc(1, 2, 4)),  # _IOW(229, 2, uint32_t)
    DevIoctl.SYNC_INIT: (0x0000E503, ioc(0, 3, 0)),  # _IO(229, 3)
    DevIoctl.PASSTHROUGH_OPEN_V1: (0x4010E57F, ioc(1, 127, 16)),  # Android _IOW(229, 127, ...)
    DevIoctl.PASSTHROUGH_OPEN_V2: (0x4004E57E, ioc(1, 126, 4)),  # Android _IOW(229, 126, __u32)
}

ARGS = {
    DevIoctl.CLONE: struct.pack("<I", 7),
    DevIoctl.BACKING_OPEN: struct.pack("<iIQ", 9, 0, 0),
    DevIoctl.BACKING_CLOSE: struct.pack("<I", 1),
    DevIoctl.SYNC_INIT: b"",
    DevIoctl.PASSTHROUGH_OPEN_V1: struct.pack("<IIQ", 9, 0, 0),
    DevIoctl.PASSTHROUGH_OPEN_V2: struct.pack("<I", 9),
}


@pytest.mark.parametrize("cmd", list(DevIoctl), ids=lambda c: c.name)
def test_numbers(cmd: DevIoctl) -> None:
    literal, computed = NUMBERS[cmd]
    assert cmd == literal == computed


def test_backing_open_arg_bytes() -> None:
    """Mainline FUSE_DEV_IOC_BACKING_OPEN: struct fuse_backing_map { int32 fd; u32 flags; u64 padding }."""
    expected = struct.pack("<iIQ", 9, 0, 0)
    assert bytes(FuseBackingMap(fd=9)) == expected
    assert bytes(FuseBackingMap()) == struct.pack("<iIQ", -1, 0, 0)  # no fd until set
    pkt = dissect_ioctl_arg(0x4010E501, expected, Dialect.MAINLINE)
    assert isinstance(pkt, FuseBackingMap)
    assert (pkt.fd, pkt.flags, pkt.padding) == (9, 0, 0)
    assert bytes(pkt) == expected
    assert ioctl_name(0x4010E501, Dialect.MAINLINE) == "FUSE_DEV_IOC_BACKING_OPEN"
    assert ioctl_arg_fields(0x4010E501, expected) == {"fd": 9, "flags": 0, "padding": 0}


def test_same_number_is_android_v0_on_android() -> None:
    raw = struct.pack("<IIQ", 9, 0, 0)
    pkt = dissect_ioctl_arg(0x4010E501, raw, Dialect.ANDROID)
    assert isinstance(pkt, FusePassthroughOut) and (pkt.fd, pkt.len, pkt.vec) == (9, 0, 0)
    assert bytes(pkt) == raw
    assert ioctl_name(0x4010E501, Dialect.ANDROID) == "FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0"
    assert ioctl_name(0x4010E501, Dialect.NONE) == "FUSE_DEV_IOC_BACKING_OPEN"


@pytest.mark.parametrize("dialect", list(Dialect), ids=lambda d: d.value)
@pytest.mark.parametrize("cmd", list(DevIoctl), ids=lambda c: c.name)
def test_every_ioctl_arg_roundtrips(cmd: DevIoctl, dialect: Dialect) -> None:
    pkt = dissect_ioctl_arg(cmd, ARGS[cmd], dialect)
    if cmd is DevIoctl.SYNC_INIT:
        assert isinstance(pkt, FuseIoctlRaw) and pkt.reason  # no argument at all
        return
    assert not isinstance(pkt, FuseIoctlRaw), pkt.reason
    assert bytes(pkt) == ARGS[cmd]
    pkt.summary()
    pkt.show(dump=True)


def test_u32_arguments_are_named() -> None:
    assert ioctl_arg_fields(DevIoctl.BACKING_CLOSE, struct.pack("<I", 3)) == {"backing_id": 3}
    assert ioctl_arg_fields(DevIoctl.CLONE, struct.pack("<I", 4)) == {"session_fd": 4}
    assert ioctl_arg_fields(DevIoctl.PASSTHROUGH_OPEN_V2, struct.pack("<I", 5), Dialect.ANDROID) == {"fd": 5}
    assert isinstance(dissect_ioctl_arg(DevIoctl.CLONE, struct.pack("<I", 4)), FuseIoctlU32)


@pytest.mark.parametrize("cmd", [c for c in DevIoctl if c is not DevIoctl.SYNC_INIT], ids=lambda c: c.name)
@pytest.mark.parametrize("cut", [0, 1, -1])
def test_wrong_size_is_raw_with_reason(cmd: DevIoctl, cut: int) -> None:
    arg = ARGS[cmd][:cut] if cut else b""
    if cut == 1:
        arg = ARGS[cmd] + b"\0"
    pkt = dissect_ioctl_arg(cmd, arg)
    assert isinstance(pkt, FuseIoctlRaw)
    assert b"takes" in pkt.reason and bytes(pkt) == arg
    assert ioctl_arg_fields(cmd, arg) == {}


def test_unknown_ioctl() -> None:
    pkt = dissect_ioctl_arg(0x5401, b"\0\0\0\0")  # TCGETS
    assert isinstance(pkt, FuseIoctlRaw) and pkt.reason == b"unknown /dev/fuse ioctl 0x5401"
    assert ioctl_name(0x5401) == "0x5401"
