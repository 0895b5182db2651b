"""A trace written onto a filesystem that fills up: the append that does not fit raises
one clear `TraceWriteError`, and the file reads back whole up to the last record written
(a real tmpfs of a few pages, mounted for the test only); plain, from many threads, or
compressed, the closing records still fit."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from traces import TraceReader, TraceWriteError, TraceWriter


@pytest.mark.parametrize("batched", [False, True])
def test_a_full_disk_leaves_a_trace_whole_up_to_its_last_record(small_disk: Path,
                                                                batched: bool) -> None:
    path = small_disk / "t.fzt"
    payload = os.urandom(3000)  # records that straddle page boundaries
    with TraceWriter(path, {"source": "test"}) as w:
        with pytest.raises(TraceWriteError) as raised:
            for ts in range(1, 10_000):
                if batched:
                    with w.batch() as b:
                        b.request(payload, ts=ts)
                        b.reply(payload[:100], ts=ts)
                else:
                    w.request(payload, ts=ts)
        written, size = w.records, w.bytes_written
        assert raised.value.errno == errno.ENOSPC
        assert f"cannot append record {written} at byte {size}" in str(raised.value)
        assert "No space left on device" in str(raised.value)
        with pytest.raises(TraceWriteError):  # still full: the same clear error, file unchanged
            w.request(payload, ts=10_001)
    assert written > 0 and os.path.getsize(path) == size
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None, reader.tail
    assert len(records) == written and all(r.raw in (payload, payload[:100]) for r in records)


def test_threads_on_a_full_disk_stop_together_at_a_whole_record(small_disk: Path) -> None:
    """The first failure stops every thread; the stop's counts describe the file, and the
    closing records fit in the room kept for them."""
    path = small_disk / "t.fzt"
    payload = os.urandom(1000)
    with TraceWriter(path, {"source": "test"}) as w:
        failures: list[int] = []

        def work() -> None:
            try:
                while True:
                    w.request(payload, ts=1)
            except TraceWriteError as exc:
                failures.append(exc.errno or 0)

        workers = [threading.Thread(target=work) for _ in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert failures == [errno.ENOSPC] * 4
        stopped = w.stopped
        assert stopped is not None and stopped[1] == w.records
        w.closing_event("recording_stopped", records=stopped[1])
        w.closing_event("session_end")
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None and reader.holes == []
    assert len(records) == stopped[1] + 2 and records[stopped[1]].offset == stopped[2]
    assert [r.event for r in records[-2:]] == ["recording_stopped", "session_end"]


@pytest.mark.parametrize("fills", ["spool", "frames"])
def test_a_full_disk_stops_a_compressed_trace_and_keeps_room_to_close_it(
        small_disk: Path, fills: str) -> None:
    """Compressed, the frames and the spool share the disk, and either may meet it first
    (records that compress well fill the spool; records that do not, the frames too):
    the trace stops at a whole record, says where, and still takes its closing records;
    the spool goes."""
    path = small_disk / "t.fzt.zst"
    same = os.urandom(3000)
    with TraceWriter(path, {"source": "test"}) as w:
        with pytest.raises(TraceWriteError):
            for ts in range(1, 100_000):
                w.request(same if fills == "spool" else os.urandom(3000), ts=ts)
        w.settle()
        stopped = w.stopped
        assert stopped is not None and stopped[0] == errno.ENOSPC
        w.closing_event("recording_stopped", records=stopped[1])
        w.closing_event("session_end")
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None, reader.tail
    assert len(records) == stopped[1] + 2 and records[stopped[1]].offset == stopped[2]
    assert all(len(r.raw or b"") == 3000 for r in records[:-2])
    assert [r.event for r in records[-2:]] == ["recording_stopped", "session_end"]
    assert not os.path.exists(f"{path}.spool")
