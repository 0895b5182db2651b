"""A trace written onto a disk that fills up mid-session, end to end: the real passthrough
server keeps its mount working and its passthrough (every BACKING_OPEN and BACKING_CLOSE
done for real, none refused), fusetrace relays on unrecorded, the trace reads back whole
and ends saying where and why recording stopped, and `record` exits 1 with one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from inspector.testing import recorded_server
from record_support import PASSTHROUGHFS, blob, mount_test, read_uncached
from traces import TraceReader, TraceWriteError, TraceWriter
from traces._append import Appender

if TYPE_CHECKING:
    from conftest import FsDirs

REPO = Path(__file__).resolve().parents[2]
SMALL_DISK = 256 << 10  # the `small_disk` tmpfs: fills after a few hundred metadata records


def _open_and_read(mnt: Path, rounds: int) -> None:
    """Metadata traffic (each open of `big` is a BACKING_OPEN, each last close a
    BACKING_CLOSE) and passthrough reads whose bytes must be right."""
    head = blob()[:4096]
    for i in range(rounds):
        name = mnt / f"f{i:04d}"
        name.write_bytes(b"x" * (i % 97))
        assert name.stat().st_size == i % 97
        os.listdir(mnt)
        with open(mnt / "big", "rb") as f:
            assert f.read(4096) == head


@mount_test
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_passthrough
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["t.fzt", "t.fzt.zst"])
def test_a_full_disk_mid_record_keeps_the_mount_and_says_where_recording_stopped(
        isolated: Path, fs_dirs: FsDirs, small_disk: Path, name: str) -> None:
    """Plain or compressed (whose frames and spool share the disk), the same promises."""
    src, mnt = fs_dirs
    (src / "big").write_bytes(blob())
    trace = small_disk / name
    argv = [*PASSTHROUGHFS, str(src), str(mnt)]
    with recorded_server(argv, mnt, trace, cwd=REPO) as rec:
        _open_and_read(mnt, 250)  # the disk fills during the 41st round (record 1428)
        assert os.statvfs(small_disk).f_bavail == 0 or trace.stat().st_size > SMALL_DISK // 2
        assert read_uncached(mnt / "big") == blob()  # still mounted, still passthrough
        status = rec.unmount_and_wait()
    out = rec.output()
    assert "refused" not in out and "BACKING_CLOSE" not in out, out  # the server's warnings
    lines = [line for line in out.splitlines() if line.strip() and
             not line.startswith("passthroughfs ")]
    ours = [line for line in lines if line.startswith("fusetrace: ")]
    assert lines == ours, out  # one line: the trap's ioctls do not add their own
    assert "recording stopped at record " in ours[0], out
    assert "No space left on device" in ours[0] and "it says so at its end" in ours[0], out
    assert status == 1, out
    with TraceReader(trace) as reader:
        records = list(reader)
        assert reader.tail is None, reader.tail
    stops = [r for r in records if r.event == "recording_stopped"]
    assert len(stops) == 1, [r.event for r in records[-5:]]
    [stop] = stops
    assert stop.meta["errno"] == 28 and "No space left on device" in stop.meta["reason"]
    assert stop.meta["records"] == records.index(stop)  # where: the records before it
    assert stop.meta["bytes"] > 0
    after = records[records.index(stop) + 1:]
    assert all(r.event is not None for r in after), "messages recorded after the stop"
    assert [r.event for r in after][-1:] == ["session_end"]
    assert after[-1].meta["exit_code"] == 1
    assert not Path(f"{trace}.spool").exists()


def test_the_recorders_appender_keeps_room_for_the_closing_records(small_disk: Path) -> None:
    """Filled to the last block by ordinary records, the disk still takes the closing
    ones: the appender refused the record that would have eaten into their reserve."""
    writer = TraceWriter(small_disk / "t.fzt", {}, appender=Appender)
    with writer:
        with pytest.raises(TraceWriteError):
            while True:
                writer.request(os.urandom(3000))
        err, records, size, _when = writer.stopped or (0, 0, 0, 0)
        assert (err, records, size) == (errno.ENOSPC, writer.records, writer.bytes_written)
        with pytest.raises(TraceWriteError, match=f"recording stopped at record {records} "):
            writer.event("late")
        writer.closing_event("recording_stopped", why="x" * 2000)
        writer.closing_event("session_end", summary="y" * 2000)
    with TraceReader(small_disk / "t.fzt") as reader:
        events = [r.event for r in reader]
        assert reader.tail is None
    assert len(events) == records + 2 and events[-2:] == ["recording_stopped", "session_end"]
