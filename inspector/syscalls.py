"""The few system calls Python's `os` module lacks, through ctypes.

mount(2)/umount2(2) because fusetrace and the bundled server mount FUSE themselves (no
fusermount3), and the new mount API (fsopen/fsconfig/fsmount/move_mount, libfuse 3.17's
first choice; glibc has no wrappers for it), renameat2(2) for RENAME2 flags, utimensat(2)/futimens(3) for
UTIME_NOW/UTIME_OMIT, fallocate(2) for modes other than 0, prctl(2) for
PR_SET_CHILD_SUBREAPER. Each raises `OSError` with the C errno, like `os` does.
"""

from __future__ import annotations

import ctypes
import enum
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


#: The new mount API's syscall numbers: the same on every architecture (Linux 5.2).
NR_MOVE_MOUNT, NR_FSOPEN, NR_FSCONFIG, NR_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1


class Fsconfig(enum.IntEnum):
    """fsconfig(2) commands, <linux/mount.h> `enum fsconfig_command`."""

    SET_FLAG = 0
    SET_STRING = 1
    SET_BINARY = 2
    SET_PATH = 3
    SET_PATH_EMPTY = 4
    SET_FD = 5
    CMD_CREATE = 6
    CMD_RECONFIGURE = 7
    CMD_CREATE_EXCL = 8


MOVE_MOUNT_F_SYMLINKS, MOVE_MOUNT_F_EMPTY_PATH = 0x1, 0x4
MOVE_MOUNT_T_SYMLINKS, MOVE_MOUNT_T_EMPTY_PATH = 0x10, 0x40
#: fsmount(2)'s mount attributes and the mount(2) flags they stand for.
MOUNT_ATTRS = {0x1: MS_RDONLY, 0x2: MS_NOSUID, 0x4: MS_NODEV, 0x8: MS_NOEXEC,
               0x10: MS_NOATIME, 0x20: MS_STRICTATIME, 0x80: MS_NODIRATIME}
#: fsconfig(2) flags that set superblock flags, and the mount(2) flags they stand for.
SB_FLAG_OPTIONS = {"ro": MS_RDONLY, "sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC,
                   "lazytime": MS_LAZYTIME}


def _nul(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """A new filesystem context for `fstype`, as a descriptor."""
    fd = _libc.syscall(NR_FSOPEN, os.fsencode(fstype), ctypes.c_uint(flags))
    _check(fd, f"fsopen({fstype})")
    return int(fd)


def fsconfig(fd: int, command: int, key: str | None = None, value: str | None = None,
             aux: int = 0) -> None:
    """One fsconfig(2) call: a parameter (SET_FLAG/SET_STRING) or a command (CMD_CREATE)."""
    _check(_libc.syscall(NR_FSCONFIG, fd, ctypes.c_uint(command), _nul(key), _nul(value),
                         ctypes.c_int(aux)), f"fsconfig {key}" if key else "fsconfig")


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attrs: int = 0) -> int:
    """A detached mount of the context `fd` created, as a descriptor."""
    mfd = _libc.syscall(NR_FSMOUNT, fd, ctypes.c_uint(flags), ctypes.c_uint(attrs))
    _check(mfd, "fsmount")
    return int(mfd)


def move_mount(from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
    _check(_libc.syscall(NR_MOVE_MOUNT, from_fd, os.fsencode(from_path), to_fd,
                         os.fsencode(to_path), ctypes.c_uint(flags)), "move_mount", to_path)


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
    a daemonized server or its children keep a session alive after the first exits. A
    process whose main thread has ended shows no descriptors under its pid: its
    descriptors are read through a thread of it that runs."""
    pids: set[int] = set()
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            where = f"/proc/{entry}"
            fds = os.listdir(f"{where}/fd")
            if not fds and _leader_ended(entry):
                tids = [t for t in os.listdir(f"{where}/task") if t != entry]
                where = f"{where}/task/{tids[0]}" if tids else where
                fds = os.listdir(f"{where}/fd") if tids else []
            if any(os.readlink(f"{where}/fd/{fd}") == target for fd in fds):
                pids.add(int(entry))
        except OSError:
            continue
    return pids


def _leader_ended(pid: str) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"
