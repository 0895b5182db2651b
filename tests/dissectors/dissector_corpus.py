"""Realistic FUSE messages built with Scapy: one request per opcode, one reply per reply
kind, one notification per notify code, with the context each decodes in.

Shared by the round-trip, quick-path and fuzz tests. Values look like what a Linux 6.x
kernel and a libfuse server exchange (x86-64 open flags, S_IF* modes, real errnos).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from scapy.packet import Packet

from dissectors import FuseContext, FuseInHeader, FuseOutHeader, NotifyCode, Opcode
from dissectors.constants import (
    FATTR_MODE,
    FATTR_SIZE,
    FOPEN_KEEP_CACHE,
    FOPEN_PARALLEL_DIRECT_WRITES,
    FOPEN_PASSTHROUGH,
    FUSE_INIT_EXT,
    FUSE_MAX_PAGES,
    FUSE_PASSTHROUGH,
    FUSE_SETXATTR_EXT,
)
from dissectors.context import Dialect
from dissectors.structs import (
    CuseInitIn,
    CuseInitInfo,
    CuseInitOut,
    FuseAccessIn,
    FuseAttr,
    FuseAttrOut,
    FuseBatchForgetIn,
    FuseBmapIn,
    FuseBmapOut,
    FuseCopyFileRangeIn,
    FuseCopyFileRangeOut,
    FuseCreateIn,
    FuseData,
    FuseDirent,
    FuseDirentList,
    FuseDirentplus,
    FuseDirentplusList,
    FuseEntryOut,
    FuseFallocateIn,
    FuseFileLock,
    FuseFlushIn,
    FuseForgetIn,
    FuseForgetList,
    FuseForgetOne,
    FuseFsyncIn,
    FuseGetattrIn,
    FuseGetxattrIn,
    FuseGetxattrOut,
    FuseInitIn,
    FuseInitOut,
    FuseInterruptIn,
    FuseIoctlIn,
    FuseIoctlIovec,
    FuseIoctlIovecList,
    FuseIoctlOut,
    FuseKstatfs,
    FuseLinkIn,
    FuseLkIn,
    FuseLkOut,
    FuseLseekIn,
    FuseLseekOut,
    FuseMkdirIn,
    FuseMknodIn,
    FuseName,
    FuseNames,
    FuseNodeidList,
    FuseNotifyDeleteOut,
    FuseNotifyInvalEntryOut,
    FuseNotifyInvalInodeOut,
    FuseNotifyPollWakeupOut,
    FuseNotifyPruneOut,
    FuseNotifyRetrieveIn,
    FuseNotifyRetrieveOut,
    FuseNotifyStoreOut,
    FuseOpenIn,
    FuseOpenOut,
    FusePollIn,
    FusePollOut,
    FuseReadIn,
    FuseReleaseIn,
    FuseRemovemappingIn,
    FuseRemovemappingList,
    FuseRemovemappingOne,
    FuseRename2In,
    FuseRenameIn,
    FuseSetattrIn,
    FuseSetupmappingIn,
    FuseSetxattrIn,
    FuseStatfsOut,
    FuseStatx,
    FuseStatxIn,
    FuseStatxOut,
    FuseSxTime,
    FuseSyncfsIn,
    FuseWriteIn,
    FuseWriteOut,
)

O = Opcode
N = NotifyCode

O_LARGEFILE = 0o100000  # x86-64's value; Python's os.O_LARGEFILE is 0 there
S_IFREG_0644 = stat.S_IFREG | 0o644
S_IFDIR_0755 = stat.S_IFDIR | 0o755
OFFSET_MAX = (1 << 63) - 1

#: The context of a 7.45 connection that negotiated passthrough and FUSE_SETXATTR_EXT.
CTX = FuseContext(minor=45, flags=FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_MAX_PAGES | FUSE_PASSTHROUGH,
                  dialect=Dialect.MAINLINE, minor_known=True)

#: INIT flags a 6.x kernel offers (low word) and the extended ones (flags2).
KERNEL_INIT_FLAGS = 0x73FFFFFB
KERNEL_INIT_FLAGS2 = 0x000000FF  # SECURITY_CTX .. HAS_RESEND, OVER_IO_URING excluded


def attr(ino: int = 2, size: int = 5, mode: int = S_IFREG_0644) -> FuseAttr:
    return FuseAttr(ino=ino, size=size, blocks=8, atime=1_700_000_000, mtime=1_700_000_001,
                    ctime=1_700_000_002, atimensec=1, mtimensec=2, ctimensec=3, mode=mode,
                    nlink=1, uid=1000, gid=1000, rdev=0, blksize=4096, flags=0)


def entry(nodeid: int = 2, mode: int = S_IFREG_0644, size: int = 5) -> FuseEntryOut:
    return FuseEntryOut(nodeid=nodeid, generation=1, entry_valid=1, attr_valid=1,
                        entry_valid_nsec=0, attr_valid_nsec=500_000_000,
                        attr=attr(nodeid, size, mode))


def req(opcode: int, unique: int, nodeid: int = 1) -> FuseInHeader:
    return FuseInHeader(opcode=opcode, unique=unique, nodeid=nodeid, uid=1000, gid=1000, pid=4242)


def rep(unique: int, error: int = 0) -> FuseOutHeader:
    return FuseOutHeader(unique=unique, error=error)


@dataclass(frozen=True)
class Case:
    """One message: its packet as built, and what decoding it needs."""

    id: str
    kind: str  # "request", "reply" or "notify"
    pkt: Packet
    ctx: FuseContext = CTX
    request: dict | None = field(default=None)  # for replies: the request's fields (size)

    @property
    def raw(self) -> bytes:
        return bytes(self.pkt)



def _requests() -> dict[int, Packet]:
    lk = FuseFileLock(start=0, end=OFFSET_MAX, type=1, pid=4242)  # F_WRLCK over the file
    return {
        O.LOOKUP: req(O.LOOKUP, 2) / FuseName(name=b"hello.txt"),
        O.FORGET: req(O.FORGET, 3, 2) / FuseForgetIn(nlookup=3),
        O.GETATTR: req(O.GETATTR, 4, 2) / FuseGetattrIn(getattr_flags=1, fh=3),
        O.SETATTR: req(O.SETATTR, 5, 2) / FuseSetattrIn(
            valid=FATTR_MODE | FATTR_SIZE, size=4096, mode=S_IFREG_0644),
        O.READLINK: req(O.READLINK, 6, 7),
        O.SYMLINK: req(O.SYMLINK, 7) / FuseNames(name=b"link", name2=b"hello.txt"),
        O.MKNOD: req(O.MKNOD, 8) / FuseMknodIn(mode=stat.S_IFIFO | 0o644, rdev=0, umask=0o022)
        / FuseName(name=b"fifo"),
        O.MKDIR: req(O.MKDIR, 9) / FuseMkdirIn(mode=0o755, umask=0o022) / FuseName(name=b"dir"),
        O.UNLINK: req(O.UNLINK, 10) / FuseName(name=b"hello.txt"),
        O.RMDIR: req(O.RMDIR, 11) / FuseName(name=b"dir"),
        O.RENAME: req(O.RENAME, 12) / FuseRenameIn(newdir=5) / FuseNames(name=b"old", name2=b"new"),
        O.LINK: req(O.LINK, 13) / FuseLinkIn(oldnodeid=2) / FuseName(name=b"hardlink"),
        O.OPEN: req(O.OPEN, 14, 2) / FuseOpenIn(flags=os.O_RDWR | O_LARGEFILE),
        O.READ: req(O.READ, 15, 2) / FuseReadIn(fh=3, offset=4096, size=4096, read_flags=0,
                                                lock_owner=0, flags=os.O_RDONLY | O_LARGEFILE),
        O.WRITE: req(O.WRITE, 16, 2) / FuseWriteIn(fh=3, offset=0, size=5, write_flags=0,
                                                   lock_owner=0, flags=os.O_WRONLY | O_LARGEFILE)
        / FuseData(data=b"hello"),
        O.STATFS: req(O.STATFS, 17),
        O.RELEASE: req(O.RELEASE, 18, 2) / FuseReleaseIn(fh=3, flags=os.O_RDWR | O_LARGEFILE,
                                                         release_flags=1, lock_owner=0xABCDEF),
        O.FSYNC: req(O.FSYNC, 20, 2) / FuseFsyncIn(fh=3, fsync_flags=1),
        O.SETXATTR: req(O.SETXATTR, 21, 2) / FuseSetxattrIn(size=5, flags=1, setxattr_flags=0)
        / FuseName(name=b"user.color") / FuseData(data=b"green"),
        O.GETXATTR: req(O.GETXATTR, 22, 2) / FuseGetxattrIn(size=64) / FuseName(name=b"user.color"),
        O.LISTXATTR: req(O.LISTXATTR, 23, 2) / FuseGetxattrIn(size=0),
        O.REMOVEXATTR: req(O.REMOVEXATTR, 24, 2) / FuseName(name=b"user.color"),
        O.FLUSH: req(O.FLUSH, 25, 2) / FuseFlushIn(fh=3, lock_owner=0xABCDEF),
        O.INIT: req(O.INIT, 26, 0) / FuseInitIn(major=7, minor=45, max_readahead=131072,
                                                flags=KERNEL_INIT_FLAGS, flags2=KERNEL_INIT_FLAGS2),
        O.OPENDIR: req(O.OPENDIR, 27) / FuseOpenIn(flags=os.O_RDONLY | O_LARGEFILE | os.O_DIRECTORY),
        O.READDIR: req(O.READDIR, 28) / FuseReadIn(fh=4, offset=0, size=4096,
                                                   flags=os.O_RDONLY | O_LARGEFILE | os.O_DIRECTORY),
        O.RELEASEDIR: req(O.RELEASEDIR, 29) / FuseReleaseIn(fh=4, flags=os.O_RDONLY | os.O_DIRECTORY),
        O.FSYNCDIR: req(O.FSYNCDIR, 30) / FuseFsyncIn(fh=4, fsync_flags=0),
        O.GETLK: req(O.GETLK, 31, 2) / FuseLkIn(fh=3, owner=0xABCDEF, lk=lk),
        O.SETLK: req(O.SETLK, 32, 2) / FuseLkIn(fh=3, owner=0xABCDEF, lk=lk),
        O.SETLKW: req(O.SETLKW, 33, 2) / FuseLkIn(fh=3, owner=0xABCDEF, lk=lk, lk_flags=1),
        O.ACCESS: req(O.ACCESS, 34, 2) / FuseAccessIn(mask=os.R_OK | os.W_OK),
        O.CREATE: req(O.CREATE, 35) / FuseCreateIn(flags=os.O_RDWR | os.O_CREAT | O_LARGEFILE,
                                                   mode=S_IFREG_0644, umask=0o022)
        / FuseName(name=b"new.txt"),
        O.INTERRUPT: req(O.INTERRUPT, 37, 0) / FuseInterruptIn(unique=33),
        O.BMAP: req(O.BMAP, 38, 2) / FuseBmapIn(block=10, blocksize=4096),
        O.DESTROY: req(O.DESTROY, 39, 0),
        O.IOCTL: req(O.IOCTL, 40, 2) / FuseIoctlIn(fh=3, flags=0, cmd=0x40086602,
                                                   arg=0x7FFC0000, in_size=8, out_size=0)
        / FuseData(data=b"\x01\0\0\0\0\0\0\0"),
        O.POLL: req(O.POLL, 41, 2) / FusePollIn(fh=3, kh=1, flags=1, events=0x1),
        O.NOTIFY_REPLY: req(O.NOTIFY_REPLY, 99, 2) / FuseNotifyRetrieveIn(offset=0, size=5)
        / FuseData(data=b"hello"),
        O.BATCH_FORGET: req(O.BATCH_FORGET, 42, 0) / FuseBatchForgetIn() / FuseForgetList(
            forgets=[FuseForgetOne(nodeid=2, nlookup=1), FuseForgetOne(nodeid=3, nlookup=7)]),
        O.FALLOCATE: req(O.FALLOCATE, 43, 2) / FuseFallocateIn(fh=3, offset=0, length=1 << 20, mode=1),
        O.READDIRPLUS: req(O.READDIRPLUS, 44) / FuseReadIn(fh=4, offset=0, size=4096,
                                                           flags=os.O_RDONLY | os.O_DIRECTORY),
        O.RENAME2: req(O.RENAME2, 45) / FuseRename2In(newdir=5, flags=1)  # RENAME_NOREPLACE
        / FuseNames(name=b"a", name2=b"b"),
        O.LSEEK: req(O.LSEEK, 46, 2) / FuseLseekIn(fh=3, offset=100, whence=3),  # SEEK_DATA
        O.COPY_FILE_RANGE: req(O.COPY_FILE_RANGE, 47, 2) / FuseCopyFileRangeIn(
            fh_in=3, off_in=0, nodeid_out=9, fh_out=5, off_out=4096, len=65536, flags=0),
        O.SETUPMAPPING: req(O.SETUPMAPPING, 48, 2) / FuseSetupmappingIn(
            fh=3, foffset=0, len=2 << 20, flags=3, moffset=4 << 20),
        O.REMOVEMAPPING: req(O.REMOVEMAPPING, 49, 2) / FuseRemovemappingIn()
        / FuseRemovemappingList(mappings=[FuseRemovemappingOne(moffset=4 << 20, len=2 << 20)]),
        O.SYNCFS: req(O.SYNCFS, 50) / FuseSyncfsIn(),
        O.TMPFILE: req(O.TMPFILE, 51) / FuseCreateIn(flags=os.O_RDWR | O_LARGEFILE,
                                                     mode=stat.S_IFREG | 0o600, umask=0o022)
        / FuseName(name=b"/"),
        O.STATX: req(O.STATX, 52, 2) / FuseStatxIn(getattr_flags=0, fh=0, sx_flags=0, sx_mask=0x7FF),
        O.COPY_FILE_RANGE_64: req(O.COPY_FILE_RANGE_64, 53, 2) / FuseCopyFileRangeIn(
            fh_in=3, off_in=0, nodeid_out=9, fh_out=5, off_out=0, len=5 << 30, flags=0),
        O.CUSE_INIT: req(O.CUSE_INIT, 1, 0) / CuseInitIn(major=7, minor=45, flags=1),
    }


def request_cases() -> list[Case]:
    return [Case(f"request-{Opcode(op).name}", "request", pkt) for op, pkt in _requests().items()]


def _dirents() -> list[FuseDirent]:
    names = [b".", b"..", b"hello.txt", b"a-name-of-16-byt"]
    return [FuseDirent(ino=i + 1, off=i + 1, type=4 if i < 2 else 8, name=n) for i, n in enumerate(names)]


def _statx() -> FuseStatx:
    t = FuseSxTime(tv_sec=1_700_000_000, tv_nsec=5)
    return FuseStatx(mask=0x7FF, blksize=4096, attributes=0, nlink=1, uid=1000, gid=1000,
                     mode=S_IFREG_0644, ino=2, size=5, blocks=8, attributes_mask=0,
                     atime=t, btime=t, ctime=t, mtime=t, rdev_major=0, rdev_minor=0,
                     dev_major=0, dev_minor=42)


def init_out(**kw) -> FuseInitOut:
    fields = dict(major=7, minor=45, max_readahead=131072,
                  flags=FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_MAX_PAGES | 0x1,
                  max_background=12, congestion_threshold=9, max_write=1 << 20, time_gran=1,
                  max_pages=256, map_alignment=0, flags2=FUSE_PASSTHROUGH >> 32,
                  max_stack_depth=1, request_timeout=0)
    fields.update(kw)
    return FuseInitOut(**fields)


def _replies() -> dict[str, tuple[int, Packet, dict | None]]:
    """id → (opcode answered, packet, request fields)."""
    open_out = FuseOpenOut(fh=3, open_flags=FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_PASSTHROUGH,
                           backing_id=1)
    out: dict[str, tuple[int, Packet, dict | None]] = {
        "LOOKUP": (O.LOOKUP, rep(2) / entry(), None),
        "MKNOD": (O.MKNOD, rep(8) / entry(6, stat.S_IFIFO | 0o644, 0), None),
        "MKDIR": (O.MKDIR, rep(9) / entry(5, S_IFDIR_0755, 4096), None),
        "SYMLINK": (O.SYMLINK, rep(7) / entry(7, stat.S_IFLNK | 0o777, 9), None),
        "LINK": (O.LINK, rep(13) / entry(2), None),
        "GETATTR": (O.GETATTR, rep(4) / FuseAttrOut(attr_valid=1, attr_valid_nsec=0, attr=attr()), None),
        "SETATTR": (O.SETATTR, rep(5) / FuseAttrOut(attr_valid=1, attr=attr(size=4096)), None),
        "READLINK": (O.READLINK, rep(6) / FuseData(data=b"hello.txt"), None),
        "OPEN": (O.OPEN, rep(14) / open_out, None),
        "OPENDIR": (O.OPENDIR, rep(27) / FuseOpenOut(fh=4, open_flags=FOPEN_KEEP_CACHE | 1 << 3), None),
        "CREATE": (O.CREATE, rep(35) / entry(8) / FuseOpenOut(fh=5, open_flags=0), None),
        "TMPFILE": (O.TMPFILE, rep(51) / entry(9, stat.S_IFREG | 0o600, 0)
                    / FuseOpenOut(fh=6, open_flags=FOPEN_PASSTHROUGH, backing_id=2), None),
        "READ": (O.READ, rep(15) / FuseData(data=b"hello world\n"), None),
        "WRITE": (O.WRITE, rep(16) / FuseWriteOut(size=5), None),
        "COPY_FILE_RANGE": (O.COPY_FILE_RANGE, rep(47) / FuseWriteOut(size=65536), None),
        "COPY_FILE_RANGE_64": (O.COPY_FILE_RANGE_64, rep(53) / FuseCopyFileRangeOut(bytes_copied=5 << 30), None),
        "STATFS": (O.STATFS, rep(17) / FuseStatfsOut(st=FuseKstatfs(
            blocks=1000, bfree=500, bavail=400, files=100, ffree=50, bsize=4096, namelen=255,
            frsize=4096)), None),
        "GETXATTR-size": (O.GETXATTR, rep(22) / FuseGetxattrOut(size=5), {"size": 0}),
        "GETXATTR-data": (O.GETXATTR, rep(22) / FuseData(data=b"green"), {"size": 64}),
        "LISTXATTR-size": (O.LISTXATTR, rep(23) / FuseGetxattrOut(size=11), {"size": 0}),
        "LISTXATTR-data": (O.LISTXATTR, rep(23) / FuseData(data=b"user.color\0"), {"size": 4096}),
        "INIT": (O.INIT, rep(26) / init_out(), None),
        "GETLK": (O.GETLK, rep(31) / FuseLkOut(lk=FuseFileLock(start=0, end=OFFSET_MAX, type=2, pid=0)), None),
        "BMAP": (O.BMAP, rep(38) / FuseBmapOut(block=1234), None),
        "IOCTL": (O.IOCTL, rep(40) / FuseIoctlOut(result=0) / FuseData(data=b"\x02\0\0\0"), None),
        "IOCTL-retry": (O.IOCTL, rep(40) / FuseIoctlOut(result=0, flags=1 << 2, in_iovs=1, out_iovs=1)
                        / FuseIoctlIovecList(iovecs=[FuseIoctlIovec(base=0x7FFC0000, len=8),
                                                     FuseIoctlIovec(base=0x7FFC1000, len=16)]), None),
        "POLL": (O.POLL, rep(41) / FusePollOut(revents=0x5), None),
        "READDIR": (O.READDIR, rep(28) / FuseDirentList(dirents=_dirents()), None),
        "READDIRPLUS": (O.READDIRPLUS, rep(44) / FuseDirentplusList(direntplus=[
            FuseDirentplus(entry_out=entry(i + 1, S_IFDIR_0755 if i < 2 else S_IFREG_0644), dirent=d)
            for i, d in enumerate(_dirents())]), None),
        "LSEEK": (O.LSEEK, rep(46) / FuseLseekOut(offset=4096), None),
        "STATX": (O.STATX, rep(52) / FuseStatxOut(attr_valid=1, attr_valid_nsec=0, flags=0,
                                                  stat=_statx()), None),
        "CUSE_INIT": (O.CUSE_INIT, rep(1) / CuseInitOut(major=7, minor=45, flags=1, max_read=65536,
                                                        max_write=65536, dev_major=240, dev_minor=0)
                      / CuseInitInfo(info=b"DEVNAME=cusedemo\0"), None),
    }
    empty = (O.UNLINK, O.RMDIR, O.RENAME, O.RENAME2, O.RELEASE, O.RELEASEDIR, O.FSYNC,
             O.FSYNCDIR, O.SETXATTR, O.REMOVEXATTR, O.FLUSH, O.SETLK, O.SETLKW, O.ACCESS,
             O.INTERRUPT, O.DESTROY, O.FALLOCATE, O.SETUPMAPPING, O.REMOVEMAPPING, O.SYNCFS)
    for op in empty:
        out[Opcode(op).name] = (op, rep(100 + op), None)
    out["LOOKUP-ENOENT"] = (O.LOOKUP, rep(2, -2), None)
    out["OPEN-EACCES"] = (O.OPEN, rep(14, -13), None)
    return out


def reply_cases() -> list[Case]:
    return [Case(f"reply-{name}", "reply", pkt, CTX.for_reply(op, request), request)
            for name, (op, pkt, request) in _replies().items()]


def notify_cases() -> list[Case]:
    n = {
        N.POLL: FuseNotifyPollWakeupOut(kh=1),
        N.INVAL_INODE: FuseNotifyInvalInodeOut(ino=2, off=0, len=-1),
        N.INVAL_ENTRY: FuseNotifyInvalEntryOut(parent=1, flags=0) / FuseName(name=b"hello.txt"),
        N.STORE: FuseNotifyStoreOut(nodeid=2, offset=0) / FuseData(data=b"hello"),
        N.RETRIEVE: FuseNotifyRetrieveOut(notify_unique=99, nodeid=2, offset=0, size=5),
        N.DELETE: FuseNotifyDeleteOut(parent=1, child=2) / FuseName(name=b"hello.txt"),
        N.RESEND: None,
        N.INC_EPOCH: None,
        N.PRUNE: FuseNotifyPruneOut() / FuseNodeidList(nodeids=[2, 3, 5]),
    }
    cases = []
    for code, body in n.items():
        hdr = FuseOutHeader(unique=0, error=code)
        cases.append(Case(f"notify-{NotifyCode(code).name}", "notify",
                          hdr if body is None else hdr / body, CTX.for_reply(None)))
    return cases


def all_cases() -> list[Case]:
    return request_cases() + reply_cases() + notify_cases()
