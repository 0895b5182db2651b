"""Mounts as the kernel lists them, FUSE mount data, and FUSE connections in sysfs.

Shared by the recorder (`inspector.record`), the bundled server and the test helpers.
Nothing here stat()s a mount point: on a FUSE mount whose server stopped answering that
would hang, so paths are compared the way /proc/self/mountinfo shows them and a mount is
named by its device number ("0:52"), whose minor is also the connection's number under
/sys/fs/fuse/connections/.

Caveats: mountinfo escapes only space, tab, newline and backslash; a mount point reached
through a symlinked last component is compared by the link's own path (`canonical`
resolves the parent directory only, for the reason above).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from . import syscalls

FUSE_CONNECTIONS = "/sys/fs/fuse/connections"
ROOTMODE_DIR = 0o40000


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields this project needs."""

    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith("fuse.")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries() -> list[MountEntry]:
    entries = []
    # thread-self: once a process's main thread has ended (Go servers, `pthread_exit`),
    # /proc/self/mountinfo reads EINVAL while its other threads still run
    with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            entries.append(MountEntry(fields[2], _unescape(fields[4]), tail[0], _unescape(tail[1])))
    return entries


def canonical(path: str | os.PathLike[str]) -> str:
    """The path mountinfo shows, without stat()ing `path` itself: that could hang on a
    FUSE mount whose server stopped answering."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mounts_at(mountpoint: str | os.PathLike[str]) -> list[MountEntry]:
    """Mounts on `mountpoint`, oldest first (the last one is the visible one)."""
    path = canonical(mountpoint)
    return [e for e in mount_entries() if e.mountpoint == path]


def mounted_device(mountpoint: str | os.PathLike[str], device: str) -> bool:
    """Whether the mount with `device` is still on `mountpoint`."""
    return any(e.device == device for e in mounts_at(mountpoint))


@dataclass
class MountOptions:
    """The parts of a FUSE mount that `-o` options choose.

    `flags` are mount(2) flags (libfuse's defaults: nosuid, nodev); `fsname` is the mount
    source, `subtype` makes the type `fuse.SUBTYPE`; the rest goes into the mount data.
    """

    allow_other: bool = False
    default_permissions: bool = False
    max_read: int | None = None
    flags: int = syscalls.MS_NOSUID | syscalls.MS_NODEV
    fsname: str | None = None
    subtype: str | None = None

    def data(self, fd: int, rootmode: int = ROOTMODE_DIR) -> str:
        """The kernel's mount data for mount(2) of descriptor `fd`."""
        return ",".join([f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={os.getuid()}",
                         f"group_id={os.getgid()}", *self.fuse_options()])

    def fuse_options(self) -> list[str]:
        """The FUSE options both mount(2) data and fusermount3's `-o` take as they are."""
        parts = ["allow_other"] if self.allow_other else []
        if self.default_permissions:
            parts.append("default_permissions")
        if self.max_read is not None:
            parts.append(f"max_read={self.max_read}")
        return parts

    @property
    def fstype(self) -> str:
        return f"fuse.{self.subtype}" if self.subtype else "fuse"


def connection_dir(device: str) -> str:
    """/sys/fs/fuse/connections/N of the FUSE mount with device "0:N"."""
    return os.path.join(FUSE_CONNECTIONS, device.partition(":")[2])


def abort_connection(device: str) -> bool:
    """Abort the FUSE connection of the mount with `device`: every waiting and future
    request fails with ENOTCONN and the device reads ENODEV. False if the connection is
    gone already (or fusectl cannot be had).

    Through fusectl at /sys/fs/fuse/connections; when nobody mounted it (minimal systems
    and containers; systemd usually does) it is mounted for the moment and unmounted
    again, so the host is left as it was."""
    there = any(e.fstype == "fusectl" and e.mountpoint == FUSE_CONNECTIONS
                for e in mount_entries())
    if not there:
        try:
            syscalls.mount("fusectl", FUSE_CONNECTIONS, "fusectl", 0, "")
        except OSError:
            return False
    try:
        with open(os.path.join(connection_dir(device), "abort"), "w") as f:
            f.write("1")
    except OSError:
        return False
    finally:
        if not there:
            try:
                syscalls.umount2(FUSE_CONNECTIONS)
            except OSError:
                pass  # someone else mounted it meanwhile and holds it
    return True


def unmount(target: str, device: str | None = None) -> str | None:
    """Unmount `target` (only if `device` is the mount there, when given): plainly, or
    lazily when busy; as an ordinary user through fusermount3. Returns "unmounted",
    "detached" (lazily), or None when there was nothing of ours to unmount. Other errors
    raise OSError."""
    found = mounts_at(target)
    if not found or (device is not None and found[-1].device != device):
        return None
    if os.geteuid() != 0:
        return fusermount_unmount(target)
    try:
        syscalls.umount2(target)
        return "unmounted"
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    syscalls.umount2(target, syscalls.MNT_DETACH)
    return "detached"


def mount_fuse(source: str, target: str, opts: MountOptions,
               devfd: int | None = None) -> tuple[int, str]:
    """Mount a FUSE connection on `target` the way libfuse does: as root mount(2) of
    `devfd` (/dev/fuse, opened here when None), as an ordinary user through fusermount3.
    Returns the /dev/fuse descriptor and what was done (the mount data, or the
    fusermount3 options), for the record. Raises OSError."""
    if os.geteuid() != 0:
        fd = fusermount(target, opts)
        return fd, f"via {FUSERMOUNT} -o {fusermount_options(opts)}"
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC) if devfd is None else devfd
    data = opts.data(fd)
    try:
        syscalls.mount(source, target, opts.fstype, opts.flags, data)
    except OSError:
        if devfd is None:
            os.close(fd)
        raise
    return fd, data


def fuse_device(target: str, fstype: str) -> str:
    """major:minor of the `fstype` mount just made on `target` (the topmost one)."""
    ours = [e for e in mounts_at(target) if e.fstype == fstype]
    if not ours:  # mount(2) succeeded, so it is there unless someone raced us
        raise OSError(errno.EIO, f"mounted {target} but cannot find it in mountinfo")
    return ours[-1].device


class BackgroundUnmount:
    """`unmount()` in a helper thread: a plain unmount can wait on the server (writeback),
    and the server may need this very process to answer; callers keep going (relaying,
    answering) and abort the connection when it is `overdue`."""

    def __init__(self, target: str, device: str, patience: float) -> None:
        self.outcome: str | None = None
        self.error: OSError | None = None
        self.deadline = time.monotonic() + patience
        self._thread = threading.Thread(target=self._run, args=(target, device),
                                        name="unmount", daemon=True)
        self._thread.start()

    def _run(self, target: str, device: str) -> None:
        try:
            self.outcome = unmount(target, device)
        except OSError as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def overdue(self) -> bool:
        return time.monotonic() > self.deadline

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# --- as an ordinary user: the setuid fusermount3 mounts and unmounts ---------------------

FUSERMOUNT = "fusermount3"
_FLAG_NAMES = {syscalls.MS_RDONLY: "ro", syscalls.MS_NOSUID: "nosuid", syscalls.MS_NODEV: "nodev",
               syscalls.MS_NOEXEC: "noexec", syscalls.MS_NOATIME: "noatime",
               syscalls.MS_NODIRATIME: "nodiratime", syscalls.MS_SYNCHRONOUS: "sync",
               syscalls.MS_DIRSYNC: "dirsync"}


def fusermount_options(opts: MountOptions) -> str:
    """MountOptions as fusermount3's `-o` (it adds fd, rootmode, user_id, group_id)."""
    parts = [name for flag, name in _FLAG_NAMES.items() if opts.flags & flag]
    parts += opts.fuse_options()
    if opts.fsname:
        parts.append(f"fsname={opts.fsname}")
    if opts.subtype:
        parts.append(f"subtype={opts.subtype}")
    return ",".join(parts)


def fusermount(target: str, opts: MountOptions, timeout: float = 30.0) -> int:
    """Mount `target` through fusermount3 and return the /dev/fuse descriptor it opened,
    received over libfuse's `_FUSE_COMMFD` socket (SCM_RIGHTS). Raises OSError."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = {**os.environ, "_FUSE_COMMFD": str(theirs.fileno())}
        try:
            res = subprocess.run([FUSERMOUNT, "-o", fusermount_options(opts), "--", target],
                                 env=env, pass_fds=[theirs.fileno()], capture_output=True,
                                 text=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise OSError(errno.ENOENT, f"{FUSERMOUNT} is not installed (Debian: fuse3)") from exc
        if res.returncode != 0:
            raise OSError(errno.EPERM, f"{FUSERMOUNT}: {res.stderr.strip() or 'failed'}")
        theirs.close()
        ours.settimeout(timeout)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    if not fds:
        raise OSError(errno.EIO, f"{FUSERMOUNT} mounted {target} but sent no descriptor")
    os.set_inheritable(fds[0], False)
    return fds[0]


def fusermount_unmount(target: str) -> str:
    """`fusermount3 -u`, lazily (`-z`) when busy; "unmounted" or "detached"."""
    for args, how in ((["-u"], "unmounted"), (["-u", "-z"], "detached")):
        res = subprocess.run([FUSERMOUNT, *args, "--", target], capture_output=True, text=True,
                             timeout=30)
        if res.returncode == 0:
            return how
    raise OSError(errno.EPERM, f"{FUSERMOUNT} -u -z {target}: {res.stderr.strip()}")
