"""The native appender (`traces/_append.c`): appends through a shared mapping from many
threads in reservation order, its C API called without the GIL, a plain path for pipes,
nothing lost to `kill -9`, and the readers' rule for what a killed writer leaves: a zero
tail is the end, a hole is skipped and noted (`traces/stream.py`)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest

from trace_helpers import HEADER
from traces import TraceIndex, TraceReader, TraceWriter, hole_note

_append = pytest.importorskip("traces._append", reason="the C extensions are not built")

REPO = Path(__file__).resolve().parents[2]
THREADS = 4


def _payload(thread: int, n: int) -> bytes:
    return thread.to_bytes(1, "little") + n.to_bytes(4, "little") + b"." * (n % 300)


def _per_thread(records: list) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for r in records:
        seen.setdefault(r.raw[0], []).append(int.from_bytes(r.raw[1:5], "little"))
    return seen


def test_threads_append_whole_records_in_reservation_order(tmp_path: Path) -> None:
    """Four threads, no lock of ours: every record whole, each thread's in its order, and
    the file cut to its records on close."""
    path = tmp_path / "t.fzt"
    count = 3000
    with TraceWriter(path, HEADER) as w:
        assert w.appender.mapped

        def work(thread: int) -> None:
            for n in range(count):
                w.request(_payload(thread, n), ts=n)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert w.records == THREADS * count
        written = w.bytes_written
    assert path.stat().st_size == written
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None and reader.holes == []
    assert _per_thread(records) == {t: list(range(count)) for t in range(THREADS)}


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_WRITE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Iovec), ctypes.c_int,
                          ctypes.c_uint, ctypes.c_int)


def test_the_c_api_appends_without_the_gil(tmp_path: Path) -> None:
    """`append.h`'s `write`, called the way the relay and the trap call it (ctypes drops
    the GIL around a foreign call): two-piece records from several threads at once."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    api = get(_append.API, b"traces._append.API")
    write = _WRITE(ctypes.c_void_p.from_address(api).value)
    path = tmp_path / "t.fzt"
    count = 2000
    with TraceWriter(path, HEADER) as w:
        target = ctypes.c_void_p(id(w.appender))

        def work(thread: int) -> None:
            for n in range(count):
                raw = _payload(thread, n)
                record = msgpack.packb([1, n, raw])
                head, body = record[:-len(raw)], raw  # the relay's iovecs: head, message
                keep = [ctypes.create_string_buffer(head, len(head)),
                        ctypes.create_string_buffer(body, len(body))]
                iov = (_Iovec * 2)(*[_Iovec(ctypes.addressof(b), len(part))
                                     for b, part in zip(keep, (head, body))])
                assert write(target, iov, 2, 1, 0) == 0

        workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert w.records == THREADS * count
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None
    assert _per_thread(records) == {t: list(range(count)) for t in range(THREADS)}


def test_a_pipe_takes_the_plain_path(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    appender = _append.Appender(write_end)
    try:
        assert not appender.mapped
        appender.append(b"abc")
        appender.append(b"defg", 2)
        assert os.read(read_end, 100) == b"abcdefg"
        assert (appender.records, appender.bytes_written) == (3, 7)
    finally:
        appender.close()
        os.close(read_end)
    with pytest.raises(ValueError, match="closed"):
        appender.append(b"late")


_KILLED = """
import sys, threading
sys.path.insert(0, {root!r})
from traces import TraceWriter
w = TraceWriter(sys.argv[1], {{}})
lock = threading.Lock()
def work(t):
    n = 0
    while True:
        w.request(bytes([t]) + n.to_bytes(4, "little") + b"." * (n % 300), ts=n)
        if n % 100 == 0:
            with lock:
                print(t, n, flush=True)
        n += 1
for t in range({threads}):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_kill_9_mid_appends_loses_no_record_written(tmp_path: Path) -> None:
    """The page cache keeps what the mapping got: every record a thread had appended
    is there, the allocated zeros after them read as the end, not as damage."""
    path = tmp_path / "t.fzt"
    child = subprocess.Popen([sys.executable, "-c", _KILLED.format(root=str(REPO), threads=THREADS),
                              str(path)], stdout=subprocess.PIPE, text=True)
    reported: dict[int, int] = {}
    try:
        assert child.stdout is not None
        while min(reported.values(), default=0) < 2000 or len(reported) < THREADS:
            line = child.stdout.readline()
            assert line, "writer child died early"
            t, n = map(int, line.split())
            reported[t] = n
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None, reader.tail
        good = reader.good_bytes
    assert path.stat().st_size > good  # allocated ahead, never cut to length
    seen = _per_thread(records)
    for t, n in reported.items():
        assert seen[t][:n + 1] == list(range(n + 1))  # none lost, none out of order
    with TraceIndex.open(path, cache_dir=tmp_path) as idx:
        assert len(idx) == len(records) and idx.tail is None


def _with_a_hole(path: Path) -> tuple[bytes, list[tuple[int, int]], tuple[int, int]]:
    """A trace as a killed writer leaves it when one thread had reserved a slot and copied
    part of its record (all but the first byte comes last) while others went on: 10
    records, a hole where the 5th was, 4 after it, then allocated zeros. Returns the bytes,
    the surviving records' spans and the hole."""
    w = TraceWriter(path, HEADER)
    spans = []
    for n in range(10):
        start = w.bytes_written
        w.request(b"record %d " % n + bytes(range(256)), ts=n)
        spans.append((start, w.bytes_written))
    w.close()
    data = bytearray(path.read_bytes())
    start, end = spans[4]
    data[start] = 0  # its first byte never written ...
    data[start + 60:end] = bytes(end - start - 60)  # ... nor its second half
    data += bytes(5000)
    return bytes(data), spans[:4] + spans[5:], (start, end)


def test_a_hole_is_skipped_and_noted(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    data, spans, hole = _with_a_hole(path)
    path.write_bytes(data)
    with TraceReader(path) as reader:
        records = list(reader)
        assert reader.tail is None and reader.holes == [hole]
    assert [(r.offset, r.ts) for r in records] == [(s, n) for (s, _), n in
                                                   zip(spans, [0, 1, 2, 3, 5, 6, 7, 8, 9])]
    with TraceReader(path) as reader:
        assert [r[1] for r in reader.arrays()] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert reader.holes == [hole]
    with TraceIndex.open(path, cache_dir=tmp_path) as idx:
        assert [idx.record(i) for i in range(len(idx))] == records  # the one before it too
        assert idx.holes == [hole]
    with TraceIndex.open(path, cache_dir=tmp_path) as cached:
        assert cached.source == "cache" and cached.holes == [hole]
    for args in ([], ["-r", ":"]):  # streamed, and through the index
        shown = subprocess.run([sys.executable, "-m", "inspector.cli", "show", *args, str(path)],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
        assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 9
        assert shown.stderr == f"fusetrace: {path}: {hole_note(hole)}\n"


def test_while_the_writer_holds_the_file_zeros_are_the_end_for_now(tmp_path: Path) -> None:
    """A live writer's unfilled slot is not a hole: the reader stops before it, cleanly,
    and reads on once the writer is gone."""
    path = tmp_path / "t.fzt"
    data, spans, hole = _with_a_hole(path)
    path.write_bytes(data)
    writer = os.open(path, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_EX)  # what a native appender holds while it writes
    try:
        with TraceReader(path) as reader:
            assert [r.ts for r in reader] == [0, 1, 2, 3]
            assert reader.tail is None and reader.holes == []
            assert reader.good_bytes == hole[0]
            fcntl.flock(writer, fcntl.LOCK_UN)
            assert [r.ts for r in reader.poll()] == [5, 6, 7, 8, 9]
            assert reader.holes == [hole]
    finally:
        os.close(writer)


@pytest.mark.parametrize("copied", [3, 20, 300])
def test_a_last_slot_left_half_copied_ends_the_trace_as_a_hole(tmp_path: Path,
                                                               copied: int) -> None:
    """Killed in the middle of its last record's copy (all but the first byte), the
    writer left bytes that are no record: the trace ends before them, and says so."""
    path = tmp_path / "t.fzt"
    with TraceWriter(path, HEADER) as w:
        w.request(b"kept", ts=1)
        start = w.bytes_written
        w.request(bytes(range(256)), ts=2)
        end = w.bytes_written
    data = bytearray(path.read_bytes())
    data[start] = 0
    data[start + copied:] = bytes(len(data) - start - copied + 4096)
    path.write_bytes(data)
    with TraceReader(path) as reader:
        assert [r.raw for r in reader] == [b"kept"]
        assert reader.tail is None
        [(at, until)] = reader.holes
        assert at == start and until == (end if copied > 10 else len(data))
