"""Node ids ↔ paths in SOURCE, with the kernel's lookup counts.

A node is keyed by its source inode (st_dev, st_ino), so hard links share a node id the
way the kernel expects from LINK. Each node remembers the path it was last reached by;
renames rewrite the paths below them. Every reply that hands the kernel an entry (LOOKUP,
CREATE, MKNOD, MKDIR, SYMLINK, LINK, each READDIRPLUS entry but `.` and `..`) counts one
lookup; FORGET and BATCH_FORGET take them back and a node at zero is dropped.

Caveats: the path is a name, not a handle (libfuse's passthrough_hp pins inodes with
O_PATH fds instead), so unlinking the one name a node was reached by leaves it pointing
nowhere even if other hard links remain; operations on it then fail with ENOENT.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass

from dissectors.constants import FUSE_ROOT_ID

Key = tuple[int, int]


def key_of(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


@dataclass
class Node:
    nodeid: int
    path: str
    key: Key
    nlookup: int = 0


class NodeTable:
    """Thread-safe; the root (node id 1) is never forgotten."""

    def __init__(self, root: str) -> None:
        self._lock = threading.Lock()
        root_node = Node(FUSE_ROOT_ID, root, key_of(os.lstat(root)), 1)
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
        return os.path.join(self.path(parent), os.fsdecode(name))

    def remember(self, path: str, st: os.stat_result) -> int:
        """Count one lookup of the inode `st` reached as `path`; returns its node id."""
        key = key_of(st)
        with self._lock:
            nodeid = self._by_key.get(key)
            if nodeid is None:
                nodeid, self._next = self._next, self._next + 1
                self._nodes[nodeid] = Node(nodeid, path, key)
                self._by_key[key] = nodeid
            node = self._nodes[nodeid]
            if nodeid != FUSE_ROOT_ID:
                node.path = path
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

    def gone(self, st: os.stat_result) -> None:
        """The inode `st` lost its last name: a new file may reuse its number, and must
        not be mistaken for it."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            with self._lock:
                self._by_key.pop(key_of(st), None)

    def moved(self, old: str, new: str) -> None:
        """`old` was renamed to `new`: rewrite it and every path below it."""
        with self._lock:
            for node in self._nodes.values():
                if node.nodeid != FUSE_ROOT_ID:
                    node.path = _rebase(node.path, old, new) or node.path

    def swapped(self, a: str, b: str) -> None:
        """RENAME_EXCHANGE of `a` and `b`."""
        with self._lock:
            for node in self._nodes.values():
                if node.nodeid != FUSE_ROOT_ID:
                    node.path = _rebase(node.path, a, b) or _rebase(node.path, b, a) or node.path

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)


def _rebase(path: str, old: str, new: str) -> str | None:
    if path == old:
        return new
    if path.startswith(old + os.sep):
        return new + path[len(old):]
    return None
