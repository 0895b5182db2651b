"""A trace written onto a filesystem that fills up: the append that does not fit raises
one clear `TraceWriteError`, and the file reads back whole up to the last record written
(a real tmpfs of a few pages, mounted for the test only)."""

from __future__ import annotations

import errno
import os
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
