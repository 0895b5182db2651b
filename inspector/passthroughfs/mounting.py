"""Getting a /dev/fuse connection: open and mount it ourselves (with mount(2), or with the
new mount API the way libfuse 3.17+ does), through the fusermount3 helper (`_FUSE_COMMFD`,
the way Go servers and unprivileged libfuse do), or take `/dev/fd/N`.

The new mount API (`fsmount`): fsopen("fuse"), fsconfig for the subtype, the source and
each option, CMD_CREATE, fsmount with the mount attributes, move_mount onto the
mountpoint. When any step fails the server says so on stderr and falls back to mount(2),
as libfuse does: a recorder that lets the failure through is seen at once.

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
import sys

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

    def __init__(self, mountpoint: str, options: MountOptions, mount_with: str = "self") -> None:
        """`mount_with`: "self" (mount(2)), "fsmount" (the new mount API) or "fusermount3"
        (through the helper, at once: the helper opens the device)."""
        self.mountpoint = mountpoint
        self.target = canonical(mountpoint)
        self.options = options
        self.helper = mount_with == "fusermount3"
        self.fsmount = mount_with == "fsmount"
        self.device: str | None = None  # major:minor of our mount, once mounted
        fd = passed_fd(mountpoint)
        self.owns_mount = fd is None
        before = {e.device for e in mounts_at(self.target)}
        if fd is not None:
            self.fd = fd
        elif self.helper:
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
        if self.fsmount:
            try:
                self._fsmount()
            except OSError as exc:
                print(f"passthroughfs: {exc.strerror}; mounting with mount(2) instead",
                      file=sys.stderr)
        if not self.fsmount or not self._mounted_since(before):
            syscalls.mount(FSNAME, self.target, FSTYPE, self.options.flags,
                           self.options.data(self.fd))
        self._note_device(before)

    def _fsmount(self) -> None:
        """Mount with fsopen/fsconfig/fsmount/move_mount (see the module's docstring)."""
        flags, attrs = self.options.flags, 0
        for attr, flag in syscalls.MOUNT_ATTRS.items():
            if flags & flag:
                attrs |= attr
        context = syscalls.fsopen("fuse")
        try:
            syscalls.fsconfig(context, syscalls.Fsconfig.SET_STRING, "subtype",
                              FSTYPE.split(".")[1])
            syscalls.fsconfig(context, syscalls.Fsconfig.SET_STRING, "source", FSNAME)
            for name, flag in syscalls.SB_FLAG_OPTIONS.items():
                if flags & flag:
                    syscalls.fsconfig(context, syscalls.Fsconfig.SET_FLAG, name)
            for item in self.options.data(self.fd).split(","):
                key, sep, value = item.partition("=")
                if sep:
                    syscalls.fsconfig(context, syscalls.Fsconfig.SET_STRING, key, value)
                else:
                    syscalls.fsconfig(context, syscalls.Fsconfig.SET_FLAG, key)
            try:
                syscalls.fsconfig(context, syscalls.Fsconfig.CMD_CREATE)
            except OSError as exc:
                raise OSError(exc.errno, f"fsconfig CREATE failed: {os.strerror(exc.errno)}") from None
            mount = syscalls.fsmount(context, syscalls.FSMOUNT_CLOEXEC, attrs)
        finally:
            os.close(context)
        try:
            syscalls.move_mount(mount, "", syscalls.AT_FDCWD, self.target,
                                syscalls.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mount)

    def _mounted_since(self, before: set[str]) -> bool:
        return any(e.fstype == FSTYPE and e.device not in before for e in mounts_at(self.target))

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
