"""A small in-memory filesystem on pyfuse3, for recording tests.

    python tests/servers/memfs.py MOUNTPOINT [--debug]

Files, directories, symlinks, hard links, xattrs, rename (with NOREPLACE/EXCHANGE
refused as EINVAL), truncate; data lives in memory and goes with the process. Inodes are
kept until the process ends (lookup counts are not tracked: FORGET is a no-op), which is
enough for the tests and keeps the code short. MOUNTPOINT may be `/dev/fd/N` (libfuse ≥ 3.3
then serves that descriptor and does not mount).

SIGTERM and SIGINT end the session cleanly (exit 0).

`--small-handles`: file and directory handles are the lowest free integers from 1, taken
back at RELEASE/RELEASEDIR and handed out again at once, as go-fuse servers do (otherwise
a handle is the inode number).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyfuse3
import trio

log = logging.getLogger("memfs")


@dataclass
class Node:
    inode: int
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    target: bytes = b""
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    times: list[int] = field(default_factory=lambda: [time.time_ns()] * 3)  # atime mtime ctime
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def _fail(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


class MemFS(pyfuse3.Operations):
    def __init__(self, small_handles: bool = False) -> None:
        super().__init__()
        self.nodes: dict[int, Node] = {
            pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2)}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.handles: dict[int, int] | None = {} if small_handles else None  # fh → inode

    def _open(self, inode: int) -> int:
        """A new handle for `inode`."""
        if self.handles is None:
            return inode
        fh = next(n for n in range(1, len(self.handles) + 2) if n not in self.handles)
        self.handles[fh] = inode
        return fh

    def _of(self, fh: int) -> int:
        """The inode a handle stands for."""
        if self.handles is None:
            return fh
        try:
            return self.handles[fh]
        except KeyError:
            raise _fail(errno.EBADF) from None

    def _close(self, fh: int) -> None:
        if self.handles is not None:
            self.handles.pop(fh, None)

    # --- helpers ------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise _fail(errno.ENOENT) from None

    def _dir(self, inode: int) -> Node:
        node = self._node(inode)
        if not stat.S_ISDIR(node.mode):
            raise _fail(errno.ENOTDIR)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid, attr.st_gid = node.uid, node.gid
        attr.st_size = (len(node.data) if stat.S_ISREG(node.mode)
                        else len(node.target) if stat.S_ISLNK(node.mode) else 4096)
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns = node.times
        attr.entry_timeout = attr.attr_timeout = 1.0
        attr.generation = 0
        return attr

    def _new(self, parent: int, name: bytes, mode: int, ctx: Any, **kw: Any) -> Node:
        directory = self._dir(parent)
        if name in directory.children:
            raise _fail(errno.EEXIST)
        node = Node(self.next_inode, mode, uid=ctx.uid, gid=ctx.gid, **kw)
        self.next_inode += 1
        self.nodes[node.inode] = node
        directory.children[name] = node.inode
        if stat.S_ISDIR(mode):
            node.nlink = 2
            directory.nlink += 1
        directory.times[1] = directory.times[2] = time.time_ns()
        return node

    def _lookup(self, parent: int, name: bytes) -> Node:
        directory = self._dir(parent)
        if name == b".":
            return directory
        try:
            return self._node(directory.children[name])
        except KeyError:
            raise _fail(errno.ENOENT) from None

    # --- operations ---------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._lookup(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            del node.data[attr.st_size:]
            node.data.extend(b"\0" * (attr.st_size - len(node.data)))
            node.times[1] = now
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.times[0] = attr.st_atime_ns
        if fields.update_mtime:
            node.times[1] = attr.st_mtime_ns
        node.times[2] = now
        return self._attr(node)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise _fail(errno.EINVAL)
        return node.target

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._new(parent_inode, name, mode, ctx))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attr(self._new(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        directory = self._dir(new_parent_inode)
        if new_name in directory.children:
            raise _fail(errno.EEXIST)
        directory.children[new_name] = inode
        node.nlink += 1
        return self._attr(node)

    def _remove(self, parent: int, name: bytes, want_dir: bool) -> None:
        directory = self._dir(parent)
        node = self._lookup(parent, name)
        if want_dir != stat.S_ISDIR(node.mode):
            raise _fail(errno.ENOTDIR if want_dir else errno.EISDIR)
        if want_dir and node.children:
            raise _fail(errno.ENOTEMPTY)
        del directory.children[name]
        node.nlink -= 2 if want_dir else 1
        if want_dir:
            directory.nlink -= 1

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._remove(parent_inode, name, False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._remove(parent_inode, name, True)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags:
            raise _fail(errno.EINVAL)
        node = self._lookup(parent_inode_old, name_old)
        new_dir = self._dir(parent_inode_new)
        if name_new in new_dir.children:
            old = self._node(new_dir.children[name_new])
            self._remove(parent_inode_new, name_new, stat.S_ISDIR(old.mode))
        del self._dir(parent_inode_old).children[name_old]
        new_dir.children[name_new] = node.inode

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & os.O_TRUNC:
            node.data.clear()
        return pyfuse3.FileInfo(fh=self._open(inode))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._new(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=self._open(node.inode)), self._attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self._node(self._of(fh)).data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._node(self._of(fh))
        if off > len(node.data):
            node.data.extend(b"\0" * (off - len(node.data)))
        node.data[off:off + len(buf)] = buf
        node.times[1] = node.times[2] = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        self._close(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    async def opendir(self, inode: int, ctx: Any) -> int:
        self._dir(inode)
        return self._open(inode)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = sorted(self._dir(self._of(fh)).children.items())
        for i, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(self._node(inode)), i):
                break

    async def releasedir(self, fh: int) -> None:
        self._close(fh)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = 1 << 20
        st.f_bfree = st.f_bavail = st.f_blocks - sum(len(n.data) for n in self.nodes.values()) // 4096
        st.f_files = 1 << 16
        st.f_ffree = st.f_favail = st.f_files - len(self.nodes)
        st.f_namemax = 255
        return st

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._node(inode).xattrs[name] = value

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        try:
            return self._node(inode).xattrs[name]
        except KeyError:
            raise _fail(pyfuse3.ENOATTR) from None

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        try:
            del self._node(inode).xattrs[name]
        except KeyError:
            raise _fail(pyfuse3.ENOATTR) from None

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        self._node(inode)
        return True

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        pass


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--small-handles", action="store_true",
                        help="handles are the lowest free integers, reused at once (go-fuse)")
    return parser.parse_args(argv)


async def _serve() -> None:
    """pyfuse3's loop until the session ends (the unmount: its read says ENODEV), or
    cancelled by SIGTERM/SIGINT."""
    async with trio.open_nursery() as nursery:

        async def serve_then_stop() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

        nursery.start_soon(serve_then_stop)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                return


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="memfs %(levelname)s: %(message)s")
    options = set(pyfuse3.default_options) | {"fsname=memfs"}
    if args.debug:
        options.add("debug")
    pyfuse3.init(MemFS(args.small_handles), args.mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        # unmount=False: with /dev/fd/N the caller owns the mount; otherwise a signal ended
        # us and the mount is unmounted below by libfuse (pyfuse3.close(unmount=True)).
        pyfuse3.close(unmount=not args.mountpoint.startswith("/dev/fd/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
