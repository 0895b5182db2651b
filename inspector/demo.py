"""`fusetrace demo`: the bundled passthrough filesystem recorded through the proxy, exactly
as a user would record their own server:

    fusetrace record -w TRACE -- python -m inspector.passthroughfs SOURCE MOUNTPOINT

on temporary directories, a short scripted workload through the mount, an unmount (which
ends the recording), then the trace, one backing id's lifecycle, and how to look further.
Needs root (mount(2) and passthrough). Passthrough ioctls reach the trace only when the
recorder's ioctl trap works here; without it the server falls back to plain opens (its
BACKING_OPEN fails with ENOTTY on the socket) and the demo says why no lifecycle is shown.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dissectors.constants import FOPEN_PASSTHROUGH, Opcode
from dissectors.ioctls import DevIoctl
from traces import Record, TraceReader

from .show import show_lines
from .testing import fuse_available, recorded_server
from .timeline import entries

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def workload(mnt: Path) -> None:
    """Create, write, read, rename, list, xattrs, unlink: and passthrough reads."""
    (mnt / "existing.txt").read_text()
    (mnt / "hello.txt").write_text("hello, fuse\n")
    blob = os.urandom(1 << 20)
    (mnt / "big.bin").write_bytes(blob)
    if (mnt / "big.bin").read_bytes() != blob:
        raise RuntimeError("read back different data through the mount")
    os.rename(mnt / "hello.txt", mnt / "greeting.txt")
    sorted(os.listdir(mnt))
    os.setxattr(mnt / "greeting.txt", "user.demo", b"yes")
    os.getxattr(mnt / "greeting.txt", "user.demo")
    os.listxattr(mnt / "greeting.txt")
    os.removexattr(mnt / "greeting.txt", "user.demo")
    os.mkdir(mnt / "dir")
    os.symlink("greeting.txt", mnt / "link")
    os.readlink(mnt / "link")
    for name in ("link", "big.bin", "greeting.txt"):
        os.unlink(mnt / name)
    os.rmdir(mnt / "dir")


@dataclass
class Lifecycle:
    """The records of one backing id's life, by record number."""

    backing_id: int
    records: list[int]


def backing_lifecycle(records: list[Record]) -> Lifecycle | None:
    """The first backing id the server registered: its BACKING_OPEN ioctl, the OPEN/CREATE
    replies carrying it with FOPEN_PASSTHROUGH, the RELEASEs of those file handles, and
    its BACKING_CLOSE. None when the trace has no successful BACKING_OPEN."""
    backing_id, found, handles = None, [], set()
    for entry in entries(records):
        rec, msg, call = entry.record, entry.message, entry.ioctl
        if call is not None and call.cmd == DevIoctl.BACKING_OPEN:
            if backing_id is None and call.errno == 0 and call.result > 0:
                backing_id = call.result
                found.append(rec.index)
        elif backing_id is None:
            continue
        elif call is not None and call.cmd == DevIoctl.BACKING_CLOSE:
            if call.fields.get("backing_id") == backing_id:
                found.append(rec.index)
                break
        elif msg is not None and rec.is_reply and msg.brief.opcode in (Opcode.OPEN, Opcode.CREATE):
            if (msg.brief.get("backing_id") == backing_id
                    and msg.brief.get("open_flags", 0) & FOPEN_PASSTHROUGH):
                found.append(rec.index)
                handles.add(msg.brief.get("fh"))
        elif msg is not None and rec.is_request and msg.brief.opcode == Opcode.RELEASE:
            if msg.brief.get("fh") in handles:
                found.append(rec.index)
    return Lifecycle(backing_id, found) if backing_id is not None else None


def _not_intercepted(records: list[Record]) -> str | None:
    for rec in records:
        if rec.event == "ioctls_not_intercepted":
            return str(rec.meta.get("reason"))
    return None


def run_demo(trace: str, no_passthrough: bool = False) -> int:
    reason = fuse_available()
    if reason:
        print(f"fusetrace demo: {reason}", file=sys.stderr)
        return 2
    trace_path = Path(trace).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="fusetrace-demo-") as tmp:
        src, mnt = Path(tmp, "source"), Path(tmp, "mnt")
        src.mkdir()
        mnt.mkdir()
        (src / "existing.txt").write_text("was here before the mount\n")
        extra = ["--no-passthrough"] if no_passthrough else []
        server = [sys.executable, "-m", "inspector.passthroughfs", str(src), str(mnt), *extra]
        names = "fsname=passthroughfs,subtype=passthroughfs"  # else "python3", after argv[0]
        print(" ".join(["$ fusetrace record -w", trace, "-o", names, "--",
                        "python -m inspector.passthroughfs SOURCE MOUNTPOINT", *extra]),
              file=sys.stderr)
        with recorded_server(server, mnt, trace_path, "-o", names, env=env) as rec:
            workload(mnt)
            status = rec.unmount_and_wait()
        if status != 0:
            print(f"fusetrace demo: the recording failed (status {status}):\n{rec.output()}",
                  file=sys.stderr)
            return 1
    reader = TraceReader(str(trace_path))
    records = list(reader)
    lines = list(show_lines(records))
    print("\n".join(lines))
    print()
    life = backing_lifecycle(records)
    if life is not None:
        print(f"Lifecycle of backing id {life.backing_id} (BACKING_OPEN -> open replies "
              f"carrying it -> RELEASE -> BACKING_CLOSE):")
        print("\n".join(lines[i] for i in life.records))
    elif no_passthrough:
        print("No backing ids: --no-passthrough serves reads and writes in the server.")
    else:
        why = _not_intercepted(records) or "the server registered none"
        print(f"No backing ids in this trace: passthrough ioctls were not intercepted ({why}).")
    print(f"\n{len(records)} records in {trace_path}\n"
          f"  full decode:  fusetrace show -v {trace}\n"
          f"  a slice:      fusetrace show -v -r 0:20 {trace}\n"
          f"  for scripts:  fusetrace export --jsonl {trace}")
    return 0
