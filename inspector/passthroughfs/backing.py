"""Passthrough backing ids: registered with the kernel once per source inode, shared.

The way libfuse's passthrough_hp does it: the first open of an inode registers its backing
fd with FUSE_DEV_IOC_BACKING_OPEN and gets an id; later opens of the same inode reuse that
id (the kernel refuses a second, different backing file for an inode that is open in
passthrough mode); the last release closes it with FUSE_DEV_IOC_BACKING_CLOSE. Every ioctl
goes into the trace with the path behind the fd.

`acquire()` returns None when the kernel refused BACKING_OPEN: the open then goes on
without passthrough (READ/WRITE through this server), which keeps the filesystem usable
on a connection where passthrough was asked for but not granted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading

from dissectors.ioctls import DevIoctl, FuseBackingMap

from .misbehave import UNKNOWN_BACKING_ID, Misbehaviour
from .nodes import Key
from .tracing import Tracer

log = logging.getLogger(__name__)


class BackingFiles:
    """Backing ids by source inode with open counts; thread-safe."""

    def __init__(self, devfd: int, tracer: Tracer, misbehave: Misbehaviour) -> None:
        self._devfd = devfd
        self._tracer = tracer
        self._misbehave = misbehave
        self._lock = threading.Lock()
        self._shared: dict[Key, list[int]] = {}  # key → [backing id, opens]

    def acquire(self, key: Key, fd: int) -> int | None:
        """The backing id for one more open of inode `key` whose backing file is `fd`."""
        if "unknown-backing-id" in self._misbehave:
            return UNKNOWN_BACKING_ID
        with self._lock:
            if "per-open-backing-id" in self._misbehave:
                return self._open(fd)
            entry = self._shared.get(key)
            if entry is not None:
                entry[1] += 1
                return entry[0]
            backing_id = self._open(fd)
            if backing_id is not None:
                self._shared[key] = [backing_id, 1]
            return backing_id

    def release(self, key: Key, backing_id: int) -> None:
        """One open of `key` using `backing_id` was released."""
        if "unknown-backing-id" in self._misbehave:
            return
        with self._lock:
            if "per-open-backing-id" not in self._misbehave:
                entry = self._shared.get(key)
                if entry is None or entry[0] != backing_id:
                    return
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del self._shared[key]
            if "leak-backing-id" in self._misbehave:
                return
            self._close(backing_id)
            if "close-twice" in self._misbehave:
                self._close(backing_id)

    def _open(self, fd: int) -> int | None:
        try:
            return self._ioctl(DevIoctl.BACKING_OPEN, bytes(FuseBackingMap(fd=fd)), fd)
        except OSError as exc:
            log.warning("FUSE_DEV_IOC_BACKING_OPEN refused (%s): open without passthrough", exc)
            return None

    def _close(self, backing_id: int) -> None:
        try:
            self._ioctl(DevIoctl.BACKING_CLOSE, struct.pack("<I", backing_id), None)
        except OSError as exc:
            log.warning("FUSE_DEV_IOC_BACKING_CLOSE %d: %s", backing_id, exc)

    def _ioctl(self, cmd: int, arg: bytes, fd: int | None) -> int:
        """ioctl() on /dev/fuse, traced; a mutable buffer makes Python return the result."""
        try:
            result, err = fcntl.ioctl(self._devfd, cmd, bytearray(arg), True), 0
        except OSError as exc:
            result, err = -1, exc.errno or 0
        self._tracer.ioctl(int(cmd), arg, result, err, fd)
        if err:
            raise OSError(err, os.strerror(err))
        return result
