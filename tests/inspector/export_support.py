"""A session recorded live once per test module for the export tests: the bundled
passthrough server behind `fusetrace record`, a read/write workload with passthrough
opens, errors and xattrs, then an unmount. Also cut and garbled copies of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.testing import fuse_available, recorded_server
from traces import TraceReader
from record_support import PASSTHROUGHFS, rw_workload


def record_session(base: Path) -> Path:
    """Record the workload under `base`; returns the trace."""
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    src, mnt, trace = base / "source", base / "mnt", base / "session.fzt"
    src.mkdir()
    mnt.mkdir()
    (src / "existing").write_bytes(b"existing file\n" * 100)
    with recorded_server([*PASSTHROUGHFS, str(src), str(mnt)], mnt, trace) as rec:
        rw_workload(mnt)
        (mnt / "existing").read_bytes()
        assert rec.unmount_and_wait() == 0, rec.output()
    return trace


def damaged_copies(trace: Path, where: Path) -> dict[str, Path]:
    """The trace cut in the middle of a record, and with a garbled record in the middle."""
    data = trace.read_bytes()
    cut, garbled = where / "cut.fzt", where / "garbled.fzt"
    cut.write_bytes(data[:len(data) - 7])
    with TraceReader(trace) as reader:
        offsets = [rec.offset for rec in reader]
    middle = offsets[len(offsets) // 2]  # 0xc1 is no msgpack object at all
    garbled.write_bytes(data[:middle] + b"\xc1" + data[middle + 1:])
    return {"cut": cut, "garbled": garbled}
