"""`fusetrace demo`: the bundled passthrough filesystem recorded through the proxy, exactly
as a user would record their own server:

    fusetrace record -w TRACE -- fusetrace passthroughfs SOURCE MOUNTPOINT

on temporary directories, a short scripted workload through the mount, an unmount (which
ends the recording), then the trace, one backing id's lifecycle, the check's verdict, and
how to look further (each hint a command that runs as printed).
Needs root (mount(2) and passthrough). Passthrough ioctls reach the trace only when the
recorder's ioctl trap works here; without it the server falls back to plain opens (its
BACKING_OPEN fails with ENOTTY on the socket) and the demo says why no lifecycle is shown.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

from traces import Record, TraceReader

from .reports.check import write_check
from .reports.common import analysed
from .reports.follow import write_follow
from .show import show_lines
from .running import fuse_available, recorded_server

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
        args = ["passthroughfs", str(src), str(mnt), *extra]
        server = [sys.executable, "-m", "inspector.cli", *args]  # `fusetrace`, this install's
        print("$ " + shlex.join(["fusetrace", "record", "-w", trace, "--", "fusetrace", *args]),
              file=sys.stderr)
        with recorded_server(server, mnt, trace_path, env=env) as rec:
            workload(mnt)
            status = rec.unmount_and_wait()
        if status != 0:
            print(f"fusetrace demo: the recording failed (status {status}):\n{rec.output()}",
                  file=sys.stderr)
            return 1
    reader = TraceReader(str(trace_path))
    records = list(reader)
    print("\n".join(show_lines(records)))
    print()
    with analysed(str(trace_path)) as analysis:
        lives = analysis.lifecycles("backing")
        if lives:
            print("Lifecycle of the first backing id (BACKING_OPEN -> open replies carrying it "
                  "-> RELEASE -> BACKING_CLOSE):")
            write_follow(analysis, "backing", lives[0].key, sys.stdout)
        elif no_passthrough:
            print("No backing ids: --no-passthrough serves reads and writes in the server.\n")
        else:
            why = _not_intercepted(records) or "the server registered none"
            print(f"No backing ids in this trace: passthrough ioctls were not intercepted "
                  f"({why}).\n")
        write_check(analysis, sys.stdout)
    first = f" --backing-id {lives[0].key}" if lives else " --nodeid 1"
    t = shlex.quote(trace)
    print(f"\n{len(records)} records in {trace_path}\n"
          f"  browse it:    fusetrace browse {t}\n"
          f"  anomalies:    fusetrace check {t}\n"
          f"  one id:       fusetrace follow {t}{first}\n"
          f"  figures:      fusetrace stats {t}\n"
          f"  full decode:  fusetrace show -v {t}\n"
          f"  a slice:      fusetrace show -v -r 0:20 {t}\n"
          f"  for scripts:  fusetrace export --jsonl {t}")
    return 0
