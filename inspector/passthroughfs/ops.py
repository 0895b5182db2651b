"""The filesystem operations: one method per opcode, mirroring SOURCE.

A handler takes a `Request` and returns the reply body as Scapy layers (None for an
empty reply, `NO_REPLY` when the kernel expects none); an `OSError` becomes an error
reply with its errno (the server does that). INIT and DESTROY belong to the server, which
owns the negotiation; here `passthrough` and `writeback` say what it concluded.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

from scapy.packet import Packet

from dissectors.constants import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_FH,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_DIRECT_IO,
    FOPEN_PASSTHROUGH,
    Opcode,
)
from dissectors.ids import FUSE_GETATTR_FH
from dissectors.offsets import IN_HEADER_SIZE
from dissectors.quick import Brief, compiled
from dissectors.structs import (
    FuseBatchForgetIn,
    FuseCopyFileRangeOut,
    FuseData,
    FuseDirent,
    FuseDirentList,
    FuseDirentplus,
    FuseDirentplusList,
    FuseEntryOut,
    FuseForgetOne,
    FuseGetxattrOut,
    FuseKstatfs,
    FuseLseekOut,
    FuseOpenOut,
    FuseStatfsOut,
    FuseWriteOut,
)

from .. import syscalls
from .attrs import Timeouts, decode_dev
from .backing import BackingFiles
from .handles import DirHandle, FileHandle, Handles
from .misbehave import Misbehaviour
from .nodes import NodeTable, key_of

NO_REPLY = object()
"""Returned by handlers of requests the kernel expects no reply to."""

FSYNC_FDATASYNC = 1
RENAME_EXCHANGE = 2
_DIRENT_HEAD = 24  # fuse_dirent without its name
_ENTRY_OUT = len(FuseEntryOut())
_COPY_MAX = 0xFFFFF000  # COPY_FILE_RANGE answers in a 32-bit size
_NOT_FOR_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY


@dataclass
class Request:
    """One request: its bytes and the fast-path decode of them."""

    raw: bytes
    brief: Brief

    @property
    def opcode(self) -> int:
        return self.brief.opcode or 0

    @property
    def unique(self) -> int:
        return self.brief.unique

    @property
    def nodeid(self) -> int:
        return self.brief.nodeid

    def get(self, name: str) -> Any:
        return self.brief.get(name)

    @property
    def name(self) -> bytes:
        return self.brief.extras["name"]

    @property
    def name2(self) -> bytes:
        return self.brief.extras["name2"]

    @property
    def data(self) -> bytes:
        """The bytes after the fixed structs and names (WRITE data, xattr values)."""
        end = self.brief.length
        return self.raw[end - self.brief.extras.get("data_len", 0):end]


def _signed(value: int) -> int:
    """Times travel as u64 holding an s64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _dirent_size(name: bytes) -> int:
    return _DIRENT_HEAD + ((len(name) + 7) & ~7)


def _dtype(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


class Operations:
    """Handlers by opcode over one SOURCE directory."""

    def __init__(self, source: str, backing: BackingFiles, timeouts: Timeouts,
                 misbehave: Misbehaviour) -> None:
        self.source = source
        self.nodes = NodeTable(source)
        self.handles = Handles(reuse_file_fh="reuse-fh" in misbehave)
        self.backing = backing
        self.timeouts = timeouts
        self.misbehave = misbehave
        self.passthrough = False  # set by the server once INIT granted FUSE_PASSTHROUGH
        self.writeback = False
        O = Opcode
        self.handlers: dict[int, Callable[[Request], Any]] = {
            O.LOOKUP: self.lookup, O.FORGET: self.forget, O.BATCH_FORGET: self.batch_forget,
            O.GETATTR: self.getattr, O.SETATTR: self.setattr, O.READLINK: self.readlink,
            O.SYMLINK: self.symlink, O.MKNOD: self.mknod, O.MKDIR: self.mkdir,
            O.UNLINK: self.unlink, O.RMDIR: self.rmdir, O.RENAME: self.rename,
            O.RENAME2: self.rename2, O.LINK: self.link, O.OPEN: self.open,
            O.CREATE: self.create, O.READ: self.read, O.WRITE: self.write,
            O.STATFS: self.statfs, O.RELEASE: self.release, O.FSYNC: self.fsync,
            O.FLUSH: self.flush, O.SETXATTR: self.setxattr, O.GETXATTR: self.getxattr,
            O.LISTXATTR: self.listxattr, O.REMOVEXATTR: self.removexattr,
            O.OPENDIR: self.opendir, O.READDIR: self.readdir,
            O.READDIRPLUS: self.readdirplus, O.RELEASEDIR: self.releasedir,
            O.FSYNCDIR: self.fsyncdir, O.ACCESS: self.access, O.LSEEK: self.lseek,
            O.FALLOCATE: self.fallocate, O.COPY_FILE_RANGE: self.copy_file_range,
            O.COPY_FILE_RANGE_64: self.copy_file_range, O.INTERRUPT: self.interrupt,
            O.SYNCFS: self.syncfs,
        }

    # --- names ------------------------------------------------------------------

    def _entry(self, path: str, st: os.stat_result) -> FuseEntryOut:
        """An entry reply for `path`: counts one lookup."""
        return self.timeouts.entry_out(self.nodes.remember(path, st), st)

    def lookup(self, req: Request) -> Packet:
        path = self.nodes.child(req.nodeid, req.name)
        return self._entry(path, os.lstat(path))

    def forget(self, req: Request) -> object:
        self.nodes.forget(req.nodeid, req.get("nlookup"))
        return NO_REPLY

    def batch_forget(self, req: Request) -> object:
        one = compiled(FuseForgetOne).st
        start = IN_HEADER_SIZE + compiled(FuseBatchForgetIn).st.size
        count = min(req.get("count"), (len(req.raw) - start) // one.size)
        for nodeid, nlookup in one.iter_unpack(req.raw[start:start + count * one.size]):
            self.nodes.forget(nodeid, nlookup)
        return NO_REPLY

    def getattr(self, req: Request) -> Packet:
        handle = None
        if req.get("getattr_flags") & FUSE_GETATTR_FH:
            handle = self.handles.find_file(req.get("fh"))
        st = os.fstat(handle.fd) if handle else os.lstat(self.nodes.path(req.nodeid))
        out = self.timeouts.attr_out(st)
        if "wrong-size" in self.misbehave and stat.S_ISREG(st.st_mode):
            out.attr.size += 1
        return out

    def setattr(self, req: Request) -> Packet:
        valid = req.get("valid")
        handle = self.handles.find_file(req.get("fh")) if valid & FATTR_FH else None
        path = self.nodes.path(req.nodeid)
        target: int | str = handle.fd if handle else path
        if (valid & (FATTR_MODE | FATTR_SIZE) and not handle
                and stat.S_ISLNK(os.lstat(path).st_mode)):  # chmod/truncate would follow it
            raise OSError(errno.EOPNOTSUPP if valid & FATTR_MODE else errno.EINVAL, path)
        if valid & FATTR_MODE:
            os.chmod(target, stat.S_IMODE(req.get("mode")))
        if valid & (FATTR_UID | FATTR_GID):
            uid = req.get("uid") if valid & FATTR_UID else -1
            gid = req.get("gid") if valid & FATTR_GID else -1
            if handle:
                os.chown(handle.fd, uid, gid)
            else:
                os.lchown(path, uid, gid)
        if valid & FATTR_SIZE:
            os.truncate(target, req.get("size"))
        if valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW):
            times = (self._time(req, valid, "a", FATTR_ATIME, FATTR_ATIME_NOW),
                     self._time(req, valid, "m", FATTR_MTIME, FATTR_MTIME_NOW))
            if handle:
                syscalls.futimens(handle.fd, *times)
            else:
                syscalls.utimensat(path, *times)
        return self.timeouts.attr_out(os.fstat(handle.fd) if handle else os.lstat(path))

    @staticmethod
    def _time(req: Request, valid: int, which: str, bit: int, now: int) -> tuple[int, int]:
        if valid & now:
            return (0, syscalls.UTIME_NOW)
        if valid & bit:
            return (_signed(req.get(f"{which}time")), req.get(f"{which}timensec"))
        return (0, syscalls.UTIME_OMIT)

    def readlink(self, req: Request) -> Packet:
        return FuseData(data=os.fsencode(os.readlink(self.nodes.path(req.nodeid))))

    def symlink(self, req: Request) -> Packet:
        path = self.nodes.child(req.nodeid, req.name)
        os.symlink(os.fsdecode(req.name2), path)
        return self._entry(path, os.lstat(path))

    def mknod(self, req: Request) -> Packet:
        path = self.nodes.child(req.nodeid, req.name)
        os.mknod(path, req.get("mode"), decode_dev(req.get("rdev")))
        return self._entry(path, os.lstat(path))

    def mkdir(self, req: Request) -> Packet:
        path = self.nodes.child(req.nodeid, req.name)
        os.mkdir(path, req.get("mode") & 0o7777)
        return self._entry(path, os.lstat(path))

    def unlink(self, req: Request) -> None:
        path = self.nodes.child(req.nodeid, req.name)
        st = os.lstat(path)
        os.unlink(path)
        self.nodes.unlinked(path, st)

    def rmdir(self, req: Request) -> None:
        path = self.nodes.child(req.nodeid, req.name)
        st = os.lstat(path)
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY and "wrong-errno" in self.misbehave:
                raise OSError(errno.EEXIST, "wrong errno on purpose") from exc
            raise
        self.nodes.unlinked(path, st)

    def rename(self, req: Request) -> None:
        self._rename(req, 0)

    def rename2(self, req: Request) -> None:
        self._rename(req, req.get("flags"))

    def _rename(self, req: Request, flags: int) -> None:
        old = self.nodes.child(req.nodeid, req.name)
        new = self.nodes.child(req.get("newdir"), req.name2)
        moving = os.lstat(old)
        try:
            victim: os.stat_result | None = os.lstat(new)
        except FileNotFoundError:
            victim = None
        if flags:
            syscalls.renameat2(old, new, flags)
        else:
            os.rename(old, new)
        if flags & RENAME_EXCHANGE:
            self.nodes.swapped(old, new)
        elif victim is None or key_of(victim) != key_of(moving):  # same inode: a no-op
            if victim is not None:
                self.nodes.unlinked(new, victim)
            self.nodes.moved(old, new)

    def link(self, req: Request) -> Packet:
        old = self.nodes.path(req.get("oldnodeid"))
        path = self.nodes.child(req.nodeid, req.name)
        os.link(old, path, follow_symlinks=False)
        return self._entry(path, os.lstat(path))

    # --- files ------------------------------------------------------------------

    def _flags(self, flags: int) -> int:
        """Open flags for our own descriptor: the kernel passes offsets, so no O_APPEND
        (pwrite on an O_APPEND fd ignores the offset); writeback caching reads pages of
        write-only files, so those become O_RDWR."""
        flags &= ~os.O_APPEND
        if self.writeback and flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        # the kernel resolves symlinks itself: a node that is one is never opened through
        return flags | os.O_CLOEXEC | os.O_NOFOLLOW

    def _opened(self, fd: int, st: os.stat_result) -> FuseOpenOut:
        """Register a new open; passthrough for regular files when the kernel agreed."""
        key = key_of(st)
        backing_id = None
        if self.passthrough and stat.S_ISREG(st.st_mode):
            backing_id = self.backing.acquire(key, fd)
        open_flags = 0
        if backing_id is not None and "passthrough-no-flag" not in self.misbehave:
            open_flags = FOPEN_PASSTHROUGH
            if "direct-io-passthrough" in self.misbehave:
                open_flags |= FOPEN_DIRECT_IO
        fh = self.handles.add(FileHandle(fd, key, backing_id))
        return FuseOpenOut(fh=fh, open_flags=open_flags, backing_id=backing_id or 0)

    def open(self, req: Request) -> Packet:
        fd = os.open(self.nodes.path(req.nodeid), self._flags(req.get("flags") & ~_NOT_FOR_OPEN))
        try:
            return self._opened(fd, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise

    def create(self, req: Request) -> Packet:
        path = self.nodes.child(req.nodeid, req.name)
        flags = self._flags(req.get("flags") | os.O_CREAT) & ~os.O_NOCTTY
        fd = os.open(path, flags, stat.S_IMODE(req.get("mode")))
        try:
            st = os.fstat(fd)
            return self._entry(path, st) / self._opened(fd, st)
        except BaseException:
            os.close(fd)
            raise

    def read(self, req: Request) -> Packet:
        fd = self.handles.file(req.get("fh")).fd
        return FuseData(data=os.pread(fd, req.get("size"), req.get("offset")))

    def write(self, req: Request) -> Packet:
        fd = self.handles.file(req.get("fh")).fd
        return FuseWriteOut(size=os.pwrite(fd, req.data, req.get("offset")))

    def statfs(self, req: Request) -> Packet:
        st = os.statvfs(self.nodes.path(req.nodeid) if req.nodeid else self.source)
        return FuseStatfsOut(st=FuseKstatfs(
            blocks=st.f_blocks, bfree=st.f_bfree, bavail=st.f_bavail, files=st.f_files,
            ffree=st.f_ffree, bsize=st.f_bsize, namelen=st.f_namemax, frsize=st.f_frsize))

    def release(self, req: Request) -> object:
        self.close_handle(req.get("fh"))
        return NO_REPLY if "no-release-reply" in self.misbehave else None

    def close_handle(self, fh: int) -> None:
        """Forget an open: close our descriptor and give back its backing id."""
        handle = self.handles.pop(fh)
        os.close(handle.fd)
        if isinstance(handle, FileHandle) and handle.backing_id is not None:
            self.backing.release(handle.key, handle.backing_id)

    def fsync(self, req: Request) -> None:
        fd = self.handles.file(req.get("fh")).fd
        (os.fdatasync if req.get("fsync_flags") & FSYNC_FDATASYNC else os.fsync)(fd)

    def flush(self, req: Request) -> None:
        # close() of a duplicate is what a local filesystem sees at close(2)
        os.close(os.dup(self.handles.file(req.get("fh")).fd))

    def lseek(self, req: Request) -> Packet:
        fd = self.handles.file(req.get("fh")).fd
        return FuseLseekOut(offset=os.lseek(fd, req.get("offset"), req.get("whence")))

    def fallocate(self, req: Request) -> None:
        fd = self.handles.file(req.get("fh")).fd
        syscalls.fallocate(fd, req.get("mode"), req.get("offset"), req.get("length"))

    def copy_file_range(self, req: Request) -> Packet:
        src = self.handles.file(req.get("fh_in")).fd
        dst = self.handles.file(req.get("fh_out")).fd
        wide = req.opcode == Opcode.COPY_FILE_RANGE_64
        length = req.get("len") if wide else min(req.get("len"), _COPY_MAX)
        done = os.copy_file_range(src, dst, length, req.get("off_in"), req.get("off_out"))
        return FuseCopyFileRangeOut(bytes_copied=done) if wide else FuseWriteOut(size=done)

    # --- extended attributes ------------------------------------------------------

    def setxattr(self, req: Request) -> None:
        os.setxattr(self.nodes.path(req.nodeid), os.fsdecode(req.name), req.data,
                    req.get("flags"), follow_symlinks=False)

    def getxattr(self, req: Request) -> Packet:
        value = os.getxattr(self.nodes.path(req.nodeid), os.fsdecode(req.name),
                            follow_symlinks=False)
        return self._sized(value, req.get("size"))

    def listxattr(self, req: Request) -> Packet:
        names = os.listxattr(self.nodes.path(req.nodeid), follow_symlinks=False)
        return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), req.get("size"))

    @staticmethod
    def _sized(value: bytes, size: int) -> Packet:
        """Size 0 asks how big the value is; a buffer too small is ERANGE."""
        if size == 0:
            return FuseGetxattrOut(size=len(value))
        if len(value) > size:
            raise OSError(errno.ERANGE, "xattr buffer too small")
        return FuseData(data=value)

    def removexattr(self, req: Request) -> None:
        os.removexattr(self.nodes.path(req.nodeid), os.fsdecode(req.name),
                       follow_symlinks=False)

    # --- directories ----------------------------------------------------------------

    def opendir(self, req: Request) -> Packet:
        fd = os.open(self.nodes.path(req.nodeid),
                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return FuseOpenOut(fh=self.handles.add(DirHandle(fd, req.nodeid)))

    @staticmethod
    def _listing(fd: int) -> list[tuple[bytes, int, int]]:
        entries = []
        for name in [".", "..", *os.listdir(fd)]:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # removed since listdir
            entries.append((os.fsencode(name), st.st_ino, _dtype(st.st_mode)))
        return entries

    def _entries(self, req: Request) -> tuple[DirHandle, list[tuple[int, bytes, int, int]]]:
        """The handle and its (offset, name, ino, type) entries from the request's offset."""
        handle = self.handles.dir(req.get("fh"))
        offset = req.get("offset")
        if offset == 0 or handle.entries is None:
            handle.entries = self._listing(handle.fd)
        return handle, [(i, *e) for i, e in enumerate(handle.entries) if i >= offset]

    def readdir(self, req: Request) -> Packet:
        _, entries = self._entries(req)
        dirents, used = [], 0
        for i, name, ino, dtype in entries:
            used += _dirent_size(name)
            if used > req.get("size"):
                break
            dirents.append(FuseDirent(ino=ino, off=i + 1, type=dtype, name=name))
        return FuseDirentList(dirents=dirents)

    def readdirplus(self, req: Request) -> Packet:
        """Like READDIR with an entry per name; each one but `.` and `..` is a lookup, so
        it is counted only once it is sure to fit in the reply."""
        handle, entries = self._entries(req)
        parent = self.nodes.path(handle.nodeid)
        out, used = [], 0
        for i, name, ino, dtype in entries:
            used += _ENTRY_OUT + _dirent_size(name)
            if used > req.get("size"):
                break
            entry = FuseEntryOut()
            if name not in (b".", b".."):
                path = os.path.join(parent, os.fsdecode(name))
                try:
                    entry = self._entry(path, os.lstat(path))
                except OSError:
                    pass  # node id 0: the kernel just skips the entry's attributes
            out.append(FuseDirentplus(entry_out=entry,
                                      dirent=FuseDirent(ino=ino, off=i + 1, type=dtype, name=name)))
        return FuseDirentplusList(direntplus=out)

    def releasedir(self, req: Request) -> None:
        self.close_handle(req.get("fh"))

    def fsyncdir(self, req: Request) -> None:
        fd = self.handles.dir(req.get("fh")).fd
        (os.fdatasync if req.get("fsync_flags") & FSYNC_FDATASYNC else os.fsync)(fd)

    # --- the rest -------------------------------------------------------------------

    def access(self, req: Request) -> None:
        path = self.nodes.path(req.nodeid)
        os.lstat(path)  # ENOENT rather than EACCES for a vanished file
        if not os.access(path, req.get("mask")):
            raise OSError(errno.EACCES, "access denied")

    def interrupt(self, req: Request) -> object:
        return NO_REPLY  # every handler is quick; the reply will come anyway

    def syncfs(self, req: Request) -> None:
        fd = os.open(self.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)
