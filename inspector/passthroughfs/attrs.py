"""os.stat_result → the kernel's attribute structs, and the timeouts that go with them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dissectors.structs import FuseAttr, FuseAttrOut, FuseEntryOut

_U64 = (1 << 64) - 1


def encode_dev(dev: int) -> int:
    """The kernel's new_encode_dev(): the 32-bit form `fuse_attr.rdev` carries."""
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_dev(dev: int) -> int:
    """new_decode_dev(): MKNOD's `rdev` back to a dev_t."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def _split(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & _U64, nsec  # times before 1970 travel as two's complement


def fuse_attr(st: os.stat_result) -> FuseAttr:
    (atime, atimensec), (mtime, mtimensec), (ctime, ctimensec) = (
        _split(st.st_atime_ns), _split(st.st_mtime_ns), _split(st.st_ctime_ns))
    return FuseAttr(
        ino=st.st_ino, size=st.st_size, blocks=st.st_blocks,
        atime=atime, mtime=mtime, ctime=ctime,
        atimensec=atimensec, mtimensec=mtimensec, ctimensec=ctimensec,
        mode=st.st_mode, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid,
        rdev=encode_dev(st.st_rdev), blksize=st.st_blksize,
    )


@dataclass(frozen=True)
class Timeouts:
    """How long the kernel may cache names and attributes (`-o entry_timeout=,attr_timeout=`)."""

    entry: float = 1.0
    attr: float = 1.0

    @staticmethod
    def _pair(seconds: float) -> tuple[int, int]:
        ns = max(int(seconds * 1_000_000_000), 0)
        return ns // 1_000_000_000, ns % 1_000_000_000

    def entry_out(self, nodeid: int, st: os.stat_result) -> FuseEntryOut:
        (entry, entry_nsec), (attr, attr_nsec) = self._pair(self.entry), self._pair(self.attr)
        return FuseEntryOut(nodeid=nodeid, generation=0, entry_valid=entry,
                            entry_valid_nsec=entry_nsec, attr_valid=attr,
                            attr_valid_nsec=attr_nsec, attr=fuse_attr(st))

    def attr_out(self, st: os.stat_result) -> FuseAttrOut:
        attr, attr_nsec = self._pair(self.attr)
        return FuseAttrOut(attr_valid=attr, attr_valid_nsec=attr_nsec, attr=fuse_attr(st))
