"""The few system calls Python's `os` module lacks, through ctypes.

mount(2)/umount2(2) because fusetrace and the bundled server mount FUSE themselves (no
fusermount3), renameat2(2) for RENAME2 flags, utimensat(2)/futimens(3) for
UTIME_NOW/UTIME_OMIT, fallocate(2) for modes other than 0, prctl(2) for
PR_SET_CHILD_SUBREAPER. Each raises `OSError` with the C errno, like `os` does.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_FORCE = 1
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(result: int, what: str, path: str | None = None) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype),
                       ctypes.c_ulong(flags), os.fsencode(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), flags), "umount2", target)


def set_child_subreaper() -> None:
    """Orphaned descendants (a server that daemonized) become our children to reap."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def renameat2(old: str, new: str, flags: int) -> None:
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                           ctypes.c_uint(flags)), "renameat2", old)


def _times(atime: tuple[int, int], mtime: tuple[int, int]) -> ctypes.Array[_Timespec]:
    return (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """Set times of `path` (not following symlinks); a tv_nsec may be UTIME_NOW/UTIME_OMIT."""
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), _times(atime, mtime),
                           AT_SYMLINK_NOFOLLOW), "utimensat", path)


def futimens(fd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    _check(_libc.futimens(fd, _times(atime, mtime)), "futimens")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)), "fallocate")


def syncfs(fd: int) -> None:
    _check(_libc.syncfs(fd), "syncfs")


def socket_holders(inode: int) -> set[int]:
    """Pids of the processes (other than this one) holding socket `inode` open, from /proc:
    a daemonized server or its children keep a session alive after the first exits."""
    pids: set[int] = set()
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == target for fd in fds):
                pids.add(int(entry))
        except OSError:
            continue
    return pids
