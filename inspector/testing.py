"""Helpers for tests that mount real FUSE filesystems (this project's and its users').

- `decode_trace()` reads a trace and decodes every record in order, for assertions;
  `tree()` lists a directory comparably between two mounts.
- The mount and process helpers of `inspector.running` (`fuse_available`,
  `wait_for_mount`, `cleanup_mount`, `mounted_server`, `recorded_server` …) are here too,
  where tests have always found them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspector.running import (  # re-exported for tests (see the docstring)
    MountedServer,
    Recording,
    cleanup_mount,
    fuse_available,
    is_mounted,
    mounted_server,
    record_command,
    recorded_server,
    stop_process,
    unmount,
    wait_for_mount,
)

__all__ = ["Decoded", "DecodedTrace", "MountedServer", "Recording", "cleanup_mount",
           "decode_trace", "fuse_available", "is_mounted", "mounted_server", "record_command",
           "recorded_server", "stop_process", "tree", "unmount", "wait_for_mount"]

if TYPE_CHECKING:
    from dissectors import IoctlCall, Message
    from traces import Record


@dataclass
class Decoded:
    """One trace record and what the session decoder made of it (None for events)."""

    record: Record
    decoded: Message | IoctlCall | None


@dataclass
class DecodedTrace:
    header: dict[str, Any]
    entries: list[Decoded]
    tail: str | None  # why reading stopped early, if it did


def decode_trace(path: str | os.PathLike[str]) -> DecodedTrace:
    """Feed every record of a trace to one `SessionDecoder`, in recorded order."""
    from dissectors import SessionDecoder
    from traces import TraceReader

    decoder = SessionDecoder()
    entries: list[Decoded] = []
    with TraceReader(path) as reader:
        for record in reader:
            decoded: Message | IoctlCall | None = None
            if record.is_request and record.raw is not None:
                decoded = decoder.feed_request(record.raw)
            elif record.is_reply and record.raw is not None:
                decoded = decoder.feed_reply(record.raw)
            elif record.is_ioctl:
                meta = record.meta
                decoded = decoder.feed_ioctl(meta["cmd"], meta["arg"], meta["result"],
                                             meta["errno"])
            entries.append(Decoded(record, decoded))
        return DecodedTrace(reader.header, entries, reader.tail)


def tree(root: Path) -> list[tuple[Any, ...]]:
    """What a directory holds, comparable between two mounts or a mount and its source:
    names, modes, link counts, sizes, content hashes and link targets (no inode numbers,
    no times, which legitimately differ)."""
    out: list[tuple[Any, ...]] = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out.append((rel, "link", os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            out.append((rel, oct(st.st_mode), st.st_nlink, st.st_size,
                        hashlib.sha256(path.read_bytes()).hexdigest()))
        else:
            out.append((rel, oct(st.st_mode)))
    return out
