"""Writer: round trips, header, file mode, batches, threads, failure rollback, crash durability."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from trace_helpers import HEADER, in_header, out_header

from traces import FORMAT_VERSION, FileAppender, Kind, TraceReader, TraceWriteError, TraceWriter


def test_round_trip_every_kind_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    req, rep = in_header(15, 2, 5, b"\0" * 40), out_header(2, 0, b"data")
    with TraceWriter(path, HEADER) as w:
        w.request(req, ts=1)
        w.request(req[:48], ts=2, len=4136, original=req + b"!", reason="masked a flag")
        w.reply(rep, ts=3)
        w.reply(rep, ts=4, write_errno=errno.EINVAL)
        w.reply(out_header(0, 2, bytes(24)), ts=5)
        w.ioctl(cmd=0x4010E501, arg=b"\x05" + bytes(15), result=1, errno=0, tid=11, pid=10,
                fd=5, path="/src/file", out=bytes(16), ts=6)
        w.ioctl(cmd=0x4004E502, arg=b"\1\0\0\0", result=-1, errno=errno.EBADF, ts=7)
        w.event("server_exit", ts=8, status=None, signal=15)
        w.event("note", ts=9, text="hello", items=[1, 2, b"\0"])
    with TraceReader(path) as r:
        got = list(r)
        assert r.tail is None and r.good_records == 9 and r.good_bytes == path.stat().st_size
    assert [x.kind for x in got] == [Kind.REQUEST] * 2 + [Kind.REPLY] * 3 + [Kind.IOCTL] * 2 \
        + [Kind.EVENT] * 2
    assert [x.ts for x in got] == list(range(1, 10))
    assert [x.index for x in got] == list(range(9))
    assert got[0].raw == req and got[0].meta == {} and not got[0].truncated
    assert got[1].raw == req[:48] and got[1].true_len == 4136 and got[1].truncated
    assert got[1].meta == {"len": 4136, "original": req + b"!", "reason": "masked a flag"}
    assert got[1].altered and not got[0].altered
    assert got[3].meta == {"write_errno": errno.EINVAL}
    assert got[4].raw == out_header(0, 2, bytes(24))
    assert got[5].raw is None and got[5].true_len == 0
    assert got[5].meta == {"cmd": 0x4010E501, "arg": b"\x05" + bytes(15), "result": 1, "errno": 0,
                           "tid": 11, "pid": 10, "fd": 5, "path": "/src/file", "out": bytes(16)}
    assert got[6].meta["errno"] == errno.EBADF and got[6].meta["fd"] is None
    assert got[7].event == "server_exit" and got[7].meta == {"event": "server_exit", "status": None,
                                                             "signal": 15}
    assert got[8].meta["items"] == [1, 2, b"\0"] and got[2].event is None
    assert (got[0].is_request, got[2].is_reply, got[5].is_ioctl, got[7].is_event) == (True,) * 4
    assert got[0].offset < got[1].offset < got[8].offset


def test_header_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    before = time.time_ns()
    with TraceWriter(path, HEADER) as w:
        assert w.header["format"] == FORMAT_VERSION
    header = TraceReader(path).header
    assert header["magic"] == "fusetrace" and header["format"] == FORMAT_VERSION == 1
    assert isinstance(header["tool"], str) and header["tool"]
    assert before <= header["created"] <= time.time_ns()
    assert {k: header[k] for k in HEADER} == HEADER  # lists stay lists
    with pytest.raises(ValueError, match="format"):
        TraceWriter(tmp_path / "u.fzt", {"format": 9})


def test_default_timestamp_is_monotonic(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    before = time.monotonic_ns()
    with TraceWriter(path) as w:
        w.request(b"x")
        w.event("note")
    a, b = TraceReader(path)
    assert before <= a.ts <= b.ts <= time.monotonic_ns()


@pytest.mark.parametrize("old_mode", [None, 0o644])
def test_mode_0600_whatever_the_umask(tmp_path: Path, old_mode: int | None) -> None:
    path = tmp_path / "t.fzt"
    if old_mode is not None:
        path.write_bytes(b"old contents")
        path.chmod(old_mode)
    old = os.umask(0)
    try:
        with TraceWriter(path) as w:
            w.request(b"secret file contents")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [r.raw for r in TraceReader(path)] == [b"secret file contents"]


def test_bad_arguments(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t.fzt") as w:
        with pytest.raises(ValueError, match="timestamp"):
            w.request(b"x", ts=-1)
        with pytest.raises(ValueError, match="timestamp"):
            w.reply(b"x", ts=1 << 63)
        with pytest.raises(TypeError, match="bytes"):
            w.request("text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="event"):
            w.event("note", event="x")
        with pytest.raises(TypeError):
            w.request(b"x", reason=object())  # not serialisable: nothing written
        assert w.records == 0
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.request(b"x")
    assert list(TraceReader(tmp_path / "t.fzt")) == []


def test_counters(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    with TraceWriter(path) as w:
        for _ in range(5):
            w.request(b"abc")
        assert w.records == 5
        written = w.bytes_written
    assert written == path.stat().st_size  # cut to its records (allocated ahead until then)


def test_batch_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.fzt"
    with TraceWriter(path, appender=FileAppender) as w:
        writes: list[int] = []
        real_write = os.write

        def counting(fd: int, data: bytes) -> int:
            writes.append(len(data))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", counting)
        with w.batch() as b:
            b.request(b"one", ts=1)
            b.reply(b"two", ts=2)
            b.ioctl(cmd=1, arg=b"", ts=3)
            b.event("note", ts=4)
            assert writes == [] and w.records == 0
        assert len(writes) == 1 and w.records == 4
        with pytest.raises(RuntimeError), w.batch() as b:
            b.request(b"sent before the error", ts=5)
            raise RuntimeError
        assert len(writes) == 2
    assert [r.ts for r in TraceReader(path)] == [1, 2, 3, 4, 5]


def test_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    with TraceWriter(path) as w:
        def worker(n: int) -> None:
            for i in range(300):
                if i % 50 == 0:
                    with w.batch() as b:
                        b.request(bytes([n]) * 100, ts=i)
                        b.reply(bytes([n]) * 7, ts=i)
                else:
                    w.request(bytes([n]) * (i % 200), ts=i)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    reader = TraceReader(path)
    records = list(reader)
    assert reader.tail is None and len(records) == 4 * (300 + 6)
    assert all(len(set(r.raw)) <= 1 for r in records)


def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FileAppender's way (a write cut short); the native appender's is at allocation
    (test_trace_append.py, test_trace_full_disk.py)."""
    path = tmp_path / "t.fzt"
    with TraceWriter(path, appender=FileAppender) as w:
        w.request(b"kept", ts=1)
        real_write = os.write
        calls = 0

        def half_then_full(fd: int, data: bytes) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                return real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_full)
        with pytest.raises(OSError):
            w.request(b"lost" * 100, ts=2)
        monkeypatch.setattr(os, "write", real_write)
        assert w.records == 1 and path.stat().st_size == w.bytes_written
        assert w.stopped is not None and w.stopped[:3] == (errno.ENOSPC, 1, w.bytes_written)
        with pytest.raises(TraceWriteError, match="recording stopped at record 1 "):
            w.request(b"after", ts=3)  # room again, but a trace with a hole would mislead
        w.closing_event("recording_stopped", ts=4)
    reader = TraceReader(path)
    records = list(reader)
    assert [r.raw for r in records[:1]] == [b"kept"] and reader.tail is None
    assert [r.event for r in records[1:]] == ["recording_stopped"]


_CHILD = """
import sys
sys.path.insert(0, {root!r})
from traces import TraceWriter
w = TraceWriter(sys.argv[1], {{"source": "proxy"}})
i = 0
while True:
    w.request(i.to_bytes(4, "little") * 64, ts=i + 1)
    if i % 2:
        with w.batch() as b:
            b.reply(b"r" * 10, ts=i + 1)
            b.reply(b"s" * 10, ts=i + 1)
    print(i, flush=True)
    i += 1
"""


def test_records_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=root), str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        last = -1
        while last < 300:
            line = child.stdout.readline()
            assert line, "writer child died early"
            last = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    reader = TraceReader(path)
    requests = [r for r in reader if r.is_request]
    assert len(requests) >= last + 1  # every request reported written is in the file
    assert [int.from_bytes(r.raw[:4], "little") for r in requests] == list(range(len(requests)))
    assert reader.tail is None  # one write per record (or batch): no half record
