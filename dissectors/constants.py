"""Name tables of the Linux FUSE protocol, as `include/uapi/linux/fuse.h` spells them.

Numbers are the kernel's (protocol 7.45, Linux 6.18). Names drop the `FUSE_` prefix
where the prefix is the same for the whole table (opcodes, notify codes, INIT flags),
so `Opcode.LOOKUP` is the kernel's `FUSE_LOOKUP`. Android's passthrough additions are
named as Android's kernels name them, with the source cited next to them.
"""

from __future__ import annotations

import enum
import os

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 45
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192
FUSE_UNIQUE_RESEND = 1 << 63  # 7.40: a resent request has the top bit of unique set
FUSE_INT_REQ_BIT = 1  # an INTERRUPT's unique: the interrupted request's, with this bit set
FUSE_NAME_MAX = 1024  # fs/fuse/fuse_i.h: the longest name the kernel sends (ENAMETOOLONG past it)
#: open(2) flags that never reach a FUSE OPEN or CREATE (Linux 6.18): fuse_do_open drops
#: O_CREAT, O_EXCL and O_NOCTTY; O_PATH and O_TMPFILE opens never call the filesystem's open;
#: O_DIRECTORY is checked against the inode first (and refused with O_CREAT since 6.4).
VFS_OPEN_FLAGS = (os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECTORY | getattr(os, "O_PATH", 0)
                  | getattr(os, "O_TMPFILE", 0))
ERRNO_LIMIT = 512  # fuse_dev_do_write refuses a reply whose error is <= -ERESTARTSYS or > 0

FUSE_DIRENT_ALIGN = 8  # fuse_dirent and fuse_direntplus are padded to this


class Opcode(enum.IntEnum):
    """`enum fuse_opcode`."""

    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50  # 7.34
    TMPFILE = 51  # 7.37
    STATX = 52  # 7.39
    COPY_FILE_RANGE_64 = 53  # 7.45
    CUSE_INIT = 4096


#: Requests the kernel sends without waiting for (or getting) a reply.
NO_REPLY_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.NOTIFY_REPLY})
#: Requests that ask and change nothing a later request can see (no file, name, handle or
#: lookup count is made, changed or freed; a READ may update atime, which replies carry
#: but a replay masks): any number may run at once in any order. LOOKUP takes a lookup
#: count, which only FORGET reads.
READ_ONLY_OPCODES = frozenset({Opcode.LOOKUP, Opcode.GETATTR, Opcode.READLINK, Opcode.READ,
                               Opcode.STATFS, Opcode.GETXATTR, Opcode.LISTXATTR, Opcode.ACCESS,
                               Opcode.READDIR, Opcode.READDIRPLUS, Opcode.LSEEK, Opcode.STATX})


class NotifyCode(enum.IntEnum):
    """`enum fuse_notify_code`: carried in `fuse_out_header.error` when `unique` is 0."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7  # 7.40
    INC_EPOCH = 8  # 7.44
    PRUNE = 9  # 7.45


def bit_names(table: dict[int, str], width: int) -> list[str]:
    """Scapy FlagsField wants a list indexed by bit; unnamed bits read `bitN`."""
    return [table.get(1 << i, f"bit{i}") for i in range(width)]


#: INIT flags as one 64-bit word: bits 32..63 travel in `flags2` (7.36+).
INIT_FLAGS: dict[int, str] = {
    1 << 0: "ASYNC_READ",
    1 << 1: "POSIX_LOCKS",
    1 << 2: "FILE_OPS",
    1 << 3: "ATOMIC_O_TRUNC",
    1 << 4: "EXPORT_SUPPORT",
    1 << 5: "BIG_WRITES",
    1 << 6: "DONT_MASK",
    1 << 7: "SPLICE_WRITE",
    1 << 8: "SPLICE_MOVE",
    1 << 9: "SPLICE_READ",
    1 << 10: "FLOCK_LOCKS",
    1 << 11: "HAS_IOCTL_DIR",
    1 << 12: "AUTO_INVAL_DATA",
    1 << 13: "DO_READDIRPLUS",
    1 << 14: "READDIRPLUS_AUTO",
    1 << 15: "ASYNC_DIO",
    1 << 16: "WRITEBACK_CACHE",
    1 << 17: "NO_OPEN_SUPPORT",
    1 << 18: "PARALLEL_DIROPS",
    1 << 19: "HANDLE_KILLPRIV",
    1 << 20: "POSIX_ACL",
    1 << 21: "ABORT_ERROR",
    1 << 22: "MAX_PAGES",
    1 << 23: "CACHE_SYMLINKS",
    1 << 24: "NO_OPENDIR_SUPPORT",
    1 << 25: "EXPLICIT_INVAL_DATA",
    1 << 26: "MAP_ALIGNMENT",
    1 << 27: "SUBMOUNTS",
    1 << 28: "HANDLE_KILLPRIV_V2",
    1 << 29: "SETXATTR_EXT",
    1 << 30: "INIT_EXT",
    # Mainline: FUSE_INIT_RESERVED ("reserved, do not use"). Android common kernels
    # before 7.36 define it as FUSE_PASSTHROUGH (ACK include/uapi/linux/fuse.h).
    1 << 31: "PASSTHROUGH_ANDROID",
    1 << 32: "SECURITY_CTX",
    1 << 33: "HAS_INODE_DAX",
    1 << 34: "CREATE_SUPP_GROUP",
    1 << 35: "HAS_EXPIRE_ONLY",
    1 << 36: "DIRECT_IO_ALLOW_MMAP",
    1 << 37: "PASSTHROUGH",  # 7.40, Linux 6.9
    1 << 38: "NO_EXPORT_SUPPORT",
    1 << 39: "HAS_RESEND",
    1 << 40: "ALLOW_IDMAP",  # 7.41
    1 << 41: "OVER_IO_URING",  # 7.42
    1 << 42: "REQUEST_TIMEOUT",  # 7.43
    # Android kernels from 7.36 moved their FUSE_PASSTHROUGH to flags2 bit 31
    # ("ANDROID: fs/fuse: Use extended init flags for FUSE_PASSTHROUGH", 2022).
    1 << 63: "PASSTHROUGH_ANDROID",
}
FUSE_PASSTHROUGH = 1 << 37
FUSE_PASSTHROUGH_ANDROID = 1 << 31  # in `flags`, minor < 36
FUSE_PASSTHROUGH_ANDROID_EXT = 1 << 63  # flags2 bit 31, minor >= 36
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_INIT_EXT = 1 << 30
FUSE_SETXATTR_EXT = 1 << 29
FUSE_MAX_PAGES = 1 << 22
FUSE_OVER_IO_URING = 1 << 41

INIT_FLAGS_LOW = bit_names(INIT_FLAGS, 32)
INIT_FLAGS_HIGH = bit_names({k >> 32: v for k, v in INIT_FLAGS.items() if k >> 32}, 32)

FOPEN_FLAGS: dict[int, str] = {
    1 << 0: "DIRECT_IO",
    1 << 1: "KEEP_CACHE",
    1 << 2: "NONSEEKABLE",
    1 << 3: "CACHE_DIR",
    1 << 4: "STREAM",
    1 << 5: "NOFLUSH",  # 7.35
    1 << 6: "PARALLEL_DIRECT_WRITES",  # 7.38
    1 << 7: "PASSTHROUGH",  # 7.40
}
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
FOPEN_PASSTHROUGH = 1 << 7

FATTR_FLAGS: dict[int, str] = {
    1 << 0: "MODE",
    1 << 1: "UID",
    1 << 2: "GID",
    1 << 3: "SIZE",
    1 << 4: "ATIME",
    1 << 5: "MTIME",
    1 << 6: "FH",
    1 << 7: "ATIME_NOW",
    1 << 8: "MTIME_NOW",
    1 << 9: "LOCKOWNER",
    1 << 10: "CTIME",
    1 << 11: "KILL_SUIDGID",
}
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 16, 32, 64
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_CTIME = 128, 256, 1024

RELEASE_FLAGS = {1 << 0: "FLUSH", 1 << 1: "FLOCK_UNLOCK"}
GETATTR_FLAGS = {1 << 0: "FH"}
LK_FLAGS = {1 << 0: "FLOCK"}
WRITE_FLAGS = {1 << 0: "CACHE", 1 << 1: "LOCKOWNER", 1 << 2: "KILL_SUIDGID"}
READ_FLAGS = {1 << 1: "LOCKOWNER"}
IOCTL_FLAGS = {
    1 << 0: "COMPAT",
    1 << 1: "UNRESTRICTED",
    1 << 2: "RETRY",
    1 << 3: "32BIT",
    1 << 4: "DIR",
    1 << 5: "COMPAT_X32",
}
FUSE_IOCTL_RETRY = 1 << 2
POLL_FLAGS = {1 << 0: "SCHEDULE_NOTIFY"}
FSYNC_FLAGS = {1 << 0: "FDATASYNC"}
ATTR_FLAGS = {1 << 0: "SUBMOUNT", 1 << 1: "DAX"}
OPEN_IN_FLAGS = {1 << 0: "KILL_SUIDGID"}  # fuse_open_in.open_flags, 7.33
SETXATTR_FLAGS = {1 << 0: "ACL_KILL_SGID"}
INVAL_ENTRY_FLAGS = {1 << 0: "EXPIRE_ONLY"}  # 7.38
SETUPMAPPING_FLAGS = {1 << 0: "WRITE", 1 << 1: "READ"}
CUSE_INIT_FLAGS = {1 << 0: "UNRESTRICTED_IOCTL"}
STATX_ATTR_FLAGS: dict[int, str] = {}


class ExtType(enum.IntEnum):
    """`enum fuse_ext_type` (7.38): types 0..31 are a fuse_secctx_header count."""

    MAX_NR_SECCTX = 31
    GROUPS = 32


# Compat sizes the kernel still accepts from servers speaking older minors.
FUSE_COMPAT_ENTRY_OUT_SIZE = 120  # before 7.9
FUSE_COMPAT_ATTR_OUT_SIZE = 96  # before 7.9
FUSE_COMPAT_MKNOD_IN_SIZE = 8  # before 7.12
FUSE_COMPAT_WRITE_IN_SIZE = 24  # before 7.9
FUSE_COMPAT_STATFS_SIZE = 48  # before 7.4
FUSE_COMPAT_SETXATTR_IN_SIZE = 8  # without FUSE_SETXATTR_EXT
FUSE_COMPAT_INIT_OUT_SIZE = 8  # before 7.5
FUSE_COMPAT_22_INIT_OUT_SIZE = 24  # before 7.23
FUSE_COMPAT_INIT_IN_SIZE = 16  # before 7.36 (no flags2)
