"""`/dev/fuse` ioctls: numbers, argument structs, and how to name a recorded call.

Mainline (include/uapi/linux/fuse.h, Linux 6.9+): FUSE_DEV_IOC_CLONE,
FUSE_DEV_IOC_BACKING_OPEN (struct fuse_backing_map), FUSE_DEV_IOC_BACKING_CLOSE, and
FUSE_DEV_IOC_SYNC_INIT (libfuse master's fuse_kernel.h; kernels without it say ENOTTY).

Android common kernels carried three forms of FUSE_DEV_IOC_PASSTHROUGH_OPEN, all returning
an id the open reply puts in `passthrough_fh` (consumed there; there is no close ioctl):
  V0 `_IOW(229, 1, struct fuse_passthrough_out)`   bionic libc/kernel/uapi/linux/fuse.h
  V1 `_IOW(229, 127, struct fuse_passthrough_out)` ACK include/uapi/linux/fuse.h
  V2 `_IOW(229, 126, __u32)`                       ACK include/uapi/linux/fuse.h (5.10+)
AOSP external/libfuse (fuse_passthrough_enable) tries V2, V1, V0, moving on only on ENOTTY.
V0 has the number and size of mainline BACKING_OPEN on 64-bit: only INIT tells them apart.
"""

from __future__ import annotations

import enum

from scapy.fields import LEIntField, LELongField, LESignedIntField, XLELongField
from scapy.packet import Packet, Raw

from .context import Dialect
from .fields import NoteField
from .flat import compiled

FUSE_DEV_IOC_MAGIC = 229

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr


class DevIoctl(enum.IntEnum):
    """Ioctl numbers on /dev/fuse (x86-64 and arm64 encoding)."""

    CLONE = _ioc(_IOC_READ, 0, 4)
    BACKING_OPEN = _ioc(_IOC_WRITE, 1, 16)  # == Android PASSTHROUGH_OPEN V0
    BACKING_CLOSE = _ioc(_IOC_WRITE, 2, 4)
    SYNC_INIT = _ioc(_IOC_NONE, 3, 0)
    PASSTHROUGH_OPEN_V1 = _ioc(_IOC_WRITE, 127, 16)
    PASSTHROUGH_OPEN_V2 = _ioc(_IOC_WRITE, 126, 4)


FUSE_DEV_IOC_CLONE = DevIoctl.CLONE
FUSE_DEV_IOC_BACKING_OPEN = DevIoctl.BACKING_OPEN
FUSE_DEV_IOC_BACKING_CLOSE = DevIoctl.BACKING_CLOSE
FUSE_DEV_IOC_SYNC_INIT = DevIoctl.SYNC_INIT
FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0 = DevIoctl.BACKING_OPEN
FUSE_DEV_IOC_PASSTHROUGH_OPEN_V1 = DevIoctl.PASSTHROUGH_OPEN_V1
FUSE_DEV_IOC_PASSTHROUGH_OPEN_V2 = DevIoctl.PASSTHROUGH_OPEN_V2


class FuseBackingMap(Packet):
    """Mainline BACKING_OPEN argument. `flags` and `padding` must be 0 (else EINVAL)."""

    name = "fuse_backing_map"
    fields_desc = [LESignedIntField("fd", -1), LEIntField("flags", 0), LELongField("padding", 0)]


class FusePassthroughOut(Packet):
    """Android V0/V1 argument (`fuse_passthrough_out_v0` in AOSP libfuse); `len` must be 0."""

    name = "fuse_passthrough_out"
    fields_desc = [LEIntField("fd", 0), LEIntField("len", 0), XLELongField("vec", 0)]


class FuseIoctlU32(Packet):
    """A bare `uint32_t` argument: BACKING_CLOSE's id, CLONE's session fd, V2's fd."""

    name = "uint32_t"
    fields_desc = [LEIntField("value", 0)]


class FuseIoctlRaw(Packet):
    name = "raw ioctl argument"
    fields_desc = [NoteField("reason", b""), Raw().fields_desc[0]]


#: The ioctls that pass one of the server's file descriptors, and the field holding it
#: (Android's V0 has the number of BACKING_OPEN: its fuse_passthrough_out.fd is at the same
#: offset as fuse_backing_map.fd).
FD_ARGS: dict[int, tuple[type[Packet], str]] = {
    DevIoctl.BACKING_OPEN: (FuseBackingMap, "fd"),
    DevIoctl.PASSTHROUGH_OPEN_V1: (FusePassthroughOut, "fd"),
    DevIoctl.PASSTHROUGH_OPEN_V2: (FuseIoctlU32, "value"),
}


def ioctl_name(cmd: int, dialect: Dialect = Dialect.NONE) -> str:
    """The kernel's name for `cmd` in this connection's dialect."""
    if cmd == DevIoctl.BACKING_OPEN and dialect is Dialect.ANDROID:
        return "FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0"
    try:
        return f"FUSE_DEV_IOC_{DevIoctl(cmd).name}"
    except ValueError:
        return f"{cmd:#x}"


_ARG_FIELDS = {"BACKING_CLOSE": "backing_id", "CLONE": "session_fd", "PASSTHROUGH_OPEN_V2": "fd"}


def _arg_class(cmd: int, arg: bytes, dialect: Dialect) -> tuple[type[Packet] | None, str]:
    """The argument's struct class, or None and the reason it stays raw."""
    try:
        kind = DevIoctl(cmd)
    except ValueError:
        return None, f"unknown /dev/fuse ioctl {cmd:#x}"
    size = (cmd >> 16) & 0x3FFF
    if len(arg) != size:
        return None, f"{ioctl_name(cmd, dialect)} takes {size} bytes, got {len(arg)}"
    if kind is DevIoctl.SYNC_INIT:
        return None, "no argument"
    if kind is DevIoctl.BACKING_OPEN:
        return (FusePassthroughOut if dialect is Dialect.ANDROID else FuseBackingMap), ""
    if kind is DevIoctl.PASSTHROUGH_OPEN_V1:
        return FusePassthroughOut, ""
    return FuseIoctlU32, ""


def dissect_ioctl_arg(cmd: int, arg: bytes, dialect: Dialect = Dialect.NONE) -> Packet:
    """Decode a recorded ioctl argument; anything unexpected stays raw with a reason."""
    cls, reason = _arg_class(cmd, arg, dialect)
    if cls is None:
        return FuseIoctlRaw(load=arg if reason != "no argument" else b"", reason=reason)
    return cls(arg)


def ioctl_arg_fields(cmd: int, arg: bytes, dialect: Dialect = Dialect.NONE) -> dict[str, int]:
    """The argument's fields as a dict (`fd`, `backing_id` …) for lists and lifecycles.

    Struct-only (no Scapy packet): lists and lifecycle scans call this per ioctl record.
    """
    cls, _ = _arg_class(cmd, arg, dialect)
    if cls is None:
        return {}
    comp = compiled(cls)
    values = comp.st.unpack(arg)
    if cls is FuseIoctlU32:
        return {_ARG_FIELDS.get(DevIoctl(cmd).name, "value"): values[0]}
    return dict(zip(comp.names, values))
