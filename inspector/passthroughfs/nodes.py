"""Node ids ↔ paths in SOURCE, with the kernel's lookup counts.

A node is keyed by its source inode (st_dev, st_ino), so hard links share a node id the
way the kernel expects from LINK. Each node remembers every name it was reached by (the
latest is the one used); renames rewrite the names below them, and unlinking a name
falls back to another one of the same inode. Every reply that hands the kernel an entry (LOOKUP,
CREATE, MKNOD, MKDIR, SYMLINK, LINK, each READDIRPLUS entry but `.` and `..`) counts one
lookup; FORGET and BATCH_FORGET take them back and a node at zero is dropped.

Caveats: names are not handles (libfuse's passthrough_hp pins inodes with O_PATH fds
instead): when the last name this server knows for an inode goes, the node points
nowhere (operations on it fail with ENOENT) even if links made behind its back remain;
the kernel finds those again by LOOKUP, under a new node id. Changes made directly in
SOURCE while mounted are seen only through new lookups.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable

from dissectors.constants import FUSE_ROOT_ID

Key = tuple[int, int]


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


@dataclass
class Node:
    nodeid: int
    key: Key
    names: list[str]  # paths known to lead to this inode, most recent last
    nlookup: int = 0

    @property
    def path(self) -> str:
        return self.names[-1]

    def named(self, path: str) -> None:
        if path in self.names:
            self.names.remove(path)
        self.names.append(path)


class NodeTable:
    """Thread-safe; the root (node id 1) is never forgotten."""

    def __init__(self, root: str) -> None:
        self._lock = threading.Lock()
        self._root = root
        root_node = Node(FUSE_ROOT_ID, key_of(os.lstat(root)), [root], 1)
        self._nodes: dict[int, Node] = {FUSE_ROOT_ID: root_node}
        self._by_key: dict[Key, int] = {root_node.key: FUSE_ROOT_ID}
        self._next = FUSE_ROOT_ID + 1

    def path(self, nodeid: int) -> str:
        with self._lock:
            node = self._nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, f"unknown node id {nodeid}")
        return node.path

    def child(self, parent: int, name: bytes) -> str:
        """`name` in directory `parent`, never outside SOURCE. The kernel sends one path
        component (and LOOKUP ".." only for an NFS export's parent); a replayed or fuzzed
        request may send anything: a name with '/' or NUL, or an empty one, is refused,
        ".." of the root is the root, and a parent that is no directory is ENOTDIR."""
        if not name or b"/" in name or b"\0" in name:
            raise OSError(errno.EINVAL, f"not a file name: {name!r}")
        base = self.path(parent)
        if not stat.S_ISDIR(os.lstat(base).st_mode):  # a symlink's target is not ours
            raise OSError(errno.ENOTDIR, base)
        if name == b".":
            return base
        if name == b"..":
            return base if base == self._root else os.path.dirname(base)
        return os.path.join(base, os.fsdecode(name))

    def remember(self, path: str, st: os.stat_result) -> int:
        """Count one lookup of the inode `st` reached as `path`; returns its node id."""
        key = key_of(st)
        with self._lock:
            nodeid = self._by_key.get(key)
            if nodeid is None:
                nodeid, self._next = self._next, self._next + 1
                self._nodes[nodeid] = Node(nodeid, key, [path])
                self._by_key[key] = nodeid
            node = self._nodes[nodeid]
            if nodeid != FUSE_ROOT_ID:
                node.named(path)
            node.nlookup += 1
            return nodeid

    def forget(self, nodeid: int, nlookup: int) -> None:
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or nodeid == FUSE_ROOT_ID:
                return
            node.nlookup -= nlookup
            if node.nlookup <= 0:
                del self._nodes[nodeid]
                if self._by_key.get(node.key) == nodeid:
                    del self._by_key[node.key]

    def unlinked(self, path: str, st: os.stat_result) -> None:
        """`path`, a name of inode `st`, was removed (unlink, rmdir, or overwritten by a
        rename). Once the inode has no name left, its number may be reused by a new file,
        which must not be mistaken for it."""
        key = key_of(st)
        with self._lock:
            node = self._nodes.get(self._by_key.get(key, 0))
            known = node is not None and path in node.names
            if known and len(node.names) > 1:
                node.names.remove(path)
            elif known or stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
                self._by_key.pop(key, None)

    def moved(self, old: str, new: str) -> None:
        """`old` was renamed to `new`: rewrite it and every name below it."""
        self._rewrite(lambda path: _rebase(path, old, new))

    def swapped(self, a: str, b: str) -> None:
        """RENAME_EXCHANGE of `a` and `b`."""
        self._rewrite(lambda path: _rebase(path, a, b) or _rebase(path, b, a))

    def _rewrite(self, change: Callable[[str], str | None]) -> None:
        with self._lock:
            for node in self._nodes.values():
                if node.nodeid != FUSE_ROOT_ID:
                    node.names = [change(name) or name for name in node.names]

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)


def _rebase(path: str, old: str, new: str) -> str | None:
    if path == old:
        return new
    if path.startswith(old + os.sep):
        return new + path[len(old):]
    return None
