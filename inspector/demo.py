"""`fusetrace demo`: the bundled passthrough filesystem on a temporary mount, a short
workload through it, and its trace shown. Needs root (mount(2) and passthrough)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from traces import TraceReader

from .show import write_show
from .testing import fuse_available, mounted_server


def workload(mnt: Path) -> None:
    """Create, write, read, rename, list, xattrs, unlink: and a passthrough read."""
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


def run_demo(trace: str, no_passthrough: bool = False) -> int:
    reason = fuse_available()
    if reason:
        print(f"fusetrace demo: {reason}", file=sys.stderr)
        return 2
    trace_path = Path(trace).resolve()
    with tempfile.TemporaryDirectory(prefix="fusetrace-demo-") as tmp:
        src, mnt = Path(tmp, "source"), Path(tmp, "mnt")
        src.mkdir()
        mnt.mkdir()
        (src / "existing.txt").write_text("was here before the mount\n")
        argv = [sys.executable, "-m", "inspector.passthroughfs", str(src), str(mnt),
                "--trace", str(trace_path)] + (["--no-passthrough"] if no_passthrough else [])
        with mounted_server(argv, mnt):
            workload(mnt)
    reader = TraceReader(str(trace_path))
    write_show(reader, sys.stdout, verbose=False, hexa=False, limit=None)
    print(f"\n{reader.good_records} records in {trace_path}\n"
          f"  full decode:  fusetrace show -v {trace}\n"
          f"  for scripts:  fusetrace export --jsonl {trace}")
    return 0
