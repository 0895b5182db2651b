"""Open file and directory handles: the `fh` values this server hands the kernel."""

from __future__ import annotations

import errno
import itertools
import threading
from dataclasses import dataclass
from typing import TypeVar

from .nodes import Key


@dataclass
class FileHandle:
    """An open source file; `backing_id` is set when the open went passthrough."""

    fd: int
    key: Key
    backing_id: int | None = None


@dataclass
class DirHandle:
    """An open source directory and the listing READDIR pages through.

    The listing is taken at offset 0 (opendir or rewinddir), so offsets stay stable while
    the kernel pages through it, the way a seekdir-less server must.
    """

    fd: int
    nodeid: int
    entries: list[tuple[bytes, int, int]] | None = None  # (name, ino, DT_* type)


H = TypeVar("H", FileHandle, DirHandle)


class Handles:
    """fh → handle, thread-safe; unknown fh values read as EBADF.

    `reuse_file_fh` is the `reuse-fh` misbehaviour: a file open gets the previous file
    open's fh while that one is still open (its handle is overwritten, its fd leaks)."""

    def __init__(self, reuse_file_fh: bool = False) -> None:
        self._lock = threading.Lock()
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next = itertools.count(1)
        self._reuse = reuse_file_fh
        self._last_file: int | None = None

    def add(self, handle: FileHandle | DirHandle) -> int:
        with self._lock:
            if (self._reuse and isinstance(handle, FileHandle) and self._last_file is not None
                    and self._last_file in self._handles):
                fh = self._last_file
            else:
                fh = next(self._next)
            if isinstance(handle, FileHandle):
                self._last_file = fh
            self._handles[fh] = handle
            return fh

    def file(self, fh: int) -> FileHandle:
        return self._get(fh, FileHandle)

    def dir(self, fh: int) -> DirHandle:
        return self._get(fh, DirHandle)

    def find_file(self, fh: int) -> FileHandle | None:
        with self._lock:
            handle = self._handles.get(fh)
        return handle if isinstance(handle, FileHandle) else None

    def pop(self, fh: int) -> FileHandle | DirHandle:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            raise OSError(errno.EBADF, f"unknown fh {fh}")
        return handle

    def _get(self, fh: int, kind: type[H]) -> H:
        with self._lock:
            handle = self._handles.get(fh)
        if not isinstance(handle, kind):
            raise OSError(errno.EBADF, f"unknown fh {fh}")
        return handle

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)
