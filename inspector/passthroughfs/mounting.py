"""Getting a /dev/fuse connection: open and mount it ourselves, through the fusermount3
helper (`_FUSE_COMMFD`, the way Go servers and unprivileged libfuse do), or take
`/dev/fd/N`.

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

from .. import syscalls
from ..mounts import MountOptions, canonical, fusermount, fusermount_unmount, mounts_at

__all__ = ["FSNAME", "FSTYPE", "Connection", "MountOptions", "passed_fd"]

log = logging.getLogger(__name__)

FSNAME = "passthroughfs"
FSTYPE = "fuse.passthroughfs"
_DEV_FD = re.compile(r"^/dev/fd/(\d+)$")


def passed_fd(mountpoint: str) -> int | None:
    """N when `mountpoint` is `/dev/fd/N` and N is an open descriptor, else None."""
    match = _DEV_FD.match(mountpoint)
    if not match:
        return None
    fd = int(match.group(1))
    fcntl.fcntl(fd, fcntl.F_GETFD)  # raises EBADF when the caller passed nothing
    return fd


class Connection:
    """A /dev/fuse descriptor and, when we mounted it, the mount to undo once."""

    def __init__(self, mountpoint: str, options: MountOptions, helper: bool = False) -> None:
        """`helper`: mount through fusermount3 (at once: the helper opens the device)."""
        self.mountpoint = mountpoint
        self.target = canonical(mountpoint)
        self.options = options
        self.helper = helper
        self.device: str | None = None  # major:minor of our mount, once mounted
        fd = passed_fd(mountpoint)
        self.owns_mount = fd is None
        before = {e.device for e in mounts_at(self.target)}
        if fd is not None:
            self.fd = fd
        elif helper:
            named = MountOptions(options.allow_other, options.default_permissions,
                                 options.max_read, options.flags, FSNAME, FSTYPE.split(".")[1])
            self.fd = fusermount(self.target, named)
            self._note_device(before)
        else:
            self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)

    def mount(self) -> None:
        if not self.owns_mount or self.helper:
            return
        before = {e.device for e in mounts_at(self.target)}
        syscalls.mount(FSNAME, self.target, FSTYPE, self.options.flags,
                       self.options.data(self.fd))
        self._note_device(before)

    def _note_device(self, before: set[str]) -> None:
        target = self.target
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
            if self.helper:
                fusermount_unmount(target)
            else:
                syscalls.umount2(target, syscalls.MNT_DETACH)
            log.info("unmounted %s", target)
        except OSError as exc:
            log.warning("unmounting %s: %s", target, exc)
