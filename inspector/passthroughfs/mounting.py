"""Getting a /dev/fuse connection: open and mount it ourselves, or take `/dev/fd/N`.

`/dev/fd/N` is libfuse's convention for "the caller already mounted, here is the fd": the
project's recorder hands the server one end of a SOCK_SEQPACKET socket that way, so this
server must neither mount nor unmount then.

Unmounting is lazy (MNT_DETACH, so a busy mount cannot keep the server alive) and happens
at most once, and only while /proc/self/mountinfo still shows *our* mount (same device
number) at the mountpoint: something else may have been mounted there after an external
unmount.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from dataclasses import dataclass

from .. import syscalls

log = logging.getLogger(__name__)

FSNAME = "passthroughfs"
FSTYPE = "fuse.passthroughfs"
_DEV_FD = re.compile(r"^/dev/fd/(\d+)$")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields this project needs."""

    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            entries.append(MountEntry(fields[2], _unescape(fields[4]), tail[0], _unescape(tail[1])))
    return entries


def canonical(path: str) -> str:
    """The path mountinfo shows, without stat()ing `path` itself: that could hang on a
    FUSE mount whose server stopped answering."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mounts_at(mountpoint: str) -> list[MountEntry]:
    path = canonical(mountpoint)
    return [e for e in mount_entries() if e.mountpoint == path]


def passed_fd(mountpoint: str) -> int | None:
    """N when `mountpoint` is `/dev/fd/N` and N is an open descriptor, else None."""
    match = _DEV_FD.match(mountpoint)
    if not match:
        return None
    fd = int(match.group(1))
    fcntl.fcntl(fd, fcntl.F_GETFD)  # raises EBADF when the caller passed nothing
    return fd


@dataclass
class MountOptions:
    """What `-o` may pass on to the kernel's mount data."""

    allow_other: bool = False
    default_permissions: bool = False
    max_read: int | None = None

    def data(self, fd: int) -> str:
        parts = [f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}", f"group_id={os.getgid()}"]
        if self.allow_other:
            parts.append("allow_other")
        if self.default_permissions:
            parts.append("default_permissions")
        if self.max_read is not None:
            parts.append(f"max_read={self.max_read}")
        return ",".join(parts)


class Connection:
    """A /dev/fuse descriptor and, when we mounted it, the mount to undo once."""

    def __init__(self, mountpoint: str, options: MountOptions) -> None:
        self.mountpoint = mountpoint
        self.target = canonical(mountpoint)
        self.options = options
        self.device: str | None = None  # major:minor of our mount, once mounted
        fd = passed_fd(mountpoint)
        self.owns_mount = fd is None
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC) if fd is None else fd

    def mount(self) -> None:
        if not self.owns_mount:
            return
        target = self.target
        before = {e.device for e in mounts_at(target)}
        syscalls.mount(FSNAME, target, FSTYPE, syscalls.MS_NOSUID | syscalls.MS_NODEV,
                       self.options.data(self.fd))
        ours = [e for e in mounts_at(target) if e.fstype == FSTYPE and e.device not in before]
        self.device = ours[-1].device if ours else None
        log.info("mounted %s on %s (device %s)", FSNAME, target, self.device)

    def unmount(self) -> None:
        """Detach our mount if it is still there; a second call does nothing."""
        device, self.device = self.device, None
        if device is None:
            return
        target = self.target
        if not any(e.device == device for e in mounts_at(target)):
            log.info("%s already unmounted", target)
            return
        try:
            syscalls.umount2(target, syscalls.MNT_DETACH)
            log.info("unmounted %s", target)
        except OSError as exc:
            log.warning("unmounting %s: %s", target, exc)
