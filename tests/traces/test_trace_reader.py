"""Reader: cut at every byte, garbage tails, not-a-trace inputs, live tailing."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from trace_helpers import HEADER, packed

from traces import FileAppender, Kind, TraceIndex, TraceReader, TraceReadError, TraceWriter

Small = tuple[Path, list[tuple[int, int]]]


def test_reads_spans_exactly(small: Small) -> None:
    path, spans = small
    reader = TraceReader(path)
    records = list(reader)
    assert [(r.offset, r.index) for r in records] == [(s, i) for i, (s, _) in enumerate(spans)]
    assert reader.tail is None and reader.good_bytes == spans[-1][1] == path.stat().st_size
    assert {r.kind for r in records} == set(Kind) and len(records) >= 30


def test_cut_at_every_byte(small: Small, tmp_path: Path) -> None:
    path, spans = small
    data = path.read_bytes()
    full = list(TraceReader(path))
    header_end = spans[0][0]
    ends = {end for _, end in spans} | {header_end}
    cut_path = tmp_path / "cut.fzt"
    for cut in range(len(data) + 1):
        cut_path.write_bytes(data[:cut])
        if cut < header_end:
            with pytest.raises(TraceReadError, match="empty file|cut inside its header"):
                TraceReader(cut_path)
            continue
        reader = TraceReader(cut_path)
        got = list(reader)
        whole = [r for r, (_, end) in zip(full, spans) if end <= cut]
        assert got == whole, cut
        good_end = spans[len(whole) - 1][1] if whole else header_end
        assert reader.good_records == len(whole) and reader.good_bytes == good_end
        if cut in ends:
            assert reader.tail is None, cut
        else:
            assert reader.tail == (f"trace cut at byte {good_end} after {len(whole)} good records: "
                                   f"incomplete record ({cut - good_end} bytes)"), cut
        if cut % 5 == 0 or cut in ends:  # index and arrays() agree (every 5th cut: fast)
            with TraceIndex.open(cut_path) as idx:
                assert len(idx) == len(whole) and idx.tail == reader.tail, cut
            _arrays_agree(cut_path, len(whole), reader.tail, reader.good_bytes)
        reader.close()


def _arrays_agree(path: Path, count: int, tail: str | None, good_bytes: int) -> None:
    """`arrays()` stops where iteration stops and says the same."""
    with TraceReader(path) as fast:
        arrays = list(fast.arrays())
        assert len(arrays) == count and fast.tail == tail and fast.good_bytes == good_bytes
        assert fast.good_records == count


@pytest.mark.parametrize(("garbage", "detail"), [
    (b"\xc1rubbish", "undecodable bytes"),  # 0xc1 is never valid msgpack
    (b"\x05", "bad record: expected a record array, found int 5"),
    (packed([9, 1, b""]), "bad record: unknown record kind 9"),
    (packed([1, -5, b""]), "bad record: bad timestamp -5"),
    (packed([1, 5, "text"]), "bad record: REQUEST without message bytes"),
    (packed([2, 5, b"", [1]]), "bad record: REPLY meta is not a map"),
    (packed([3, 5, {"arg": b""}]), "bad record: IOCTL record without a command number"),
    (packed([4, 5, {"x": 1}]), "bad record: EVENT record without a name"),
    (packed([1, 5]), "bad record: record array of 2 items"),
    (packed([1, True, b""]), "bad record: bad timestamp True"),
    (b"\xdb\xff\xff\xff\xff", "incomplete record"),  # a 4 GiB string: buffered up to EOF
    (b"\xdd\xff\xff\xff\xff", "undecodable bytes"),  # a 4 G-item array
    (b"\xdc\x0f\xff" * 2000, "undecodable bytes (StackError)"),  # nested 4095-item arrays
])
def test_garbage_after_valid_prefix(small: Small, garbage: bytes, detail: str) -> None:
    path, spans = small
    with open(path, "ab") as f:
        f.write(garbage + packed([1, 1, b"never reached"]))
    reader = TraceReader(path)
    assert len(list(reader)) == len(spans)
    assert reader.tail is not None and reader.tail.startswith(
        f"trace cut at byte {spans[-1][1]} after {len(spans)} good records: ")
    assert detail in reader.tail
    with TraceIndex.open(path) as idx:
        assert len(idx) == len(spans) and idx.tail == reader.tail
    _arrays_agree(path, len(spans), reader.tail, reader.good_bytes)


def _header(**fields: object) -> bytes:
    return packed({"magic": "fusetrace", "format": 1, "tool": "test", "created": 0, **fields})


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file, not a fusetrace trace"),
    (b"hello, I am a text file\n", "not a fusetrace trace (no header map)"),
    (packed({"magic": "pcap", "format": 1}), "not a fusetrace trace (bad magic)"),
    (packed([1, 2, 3]), "not a fusetrace trace (no header map)"),
    (b"\x81\xc1", "not a fusetrace trace (not msgpack"),
    (_header()[:-3], "trace cut inside its header at byte"),
    (_header(format="1"), "bad format number '1'"),
    (_header(format=2), "written by a newer fusetrace (format 2); upgrade fusetrace"),
])
def test_not_a_trace(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.fzt"
    path.write_bytes(content)
    for opener in (TraceReader, TraceIndex.open):
        with pytest.raises(TraceReadError) as info:
            opener(path)
        assert str(path) in str(info.value) and message in str(info.value)


def test_missing_directory_and_device(tmp_path: Path) -> None:
    cases = [(tmp_path / "nope.fzt", "no such file"), (tmp_path, "is a directory"),
             (Path("/dev/null"), "not a regular file")]
    for path, message in cases:
        with pytest.raises(TraceReadError, match=message):
            TraceReader(path)


def test_poll_follows_a_growing_trace(tmp_path: Path) -> None:
    """Written by plain appends (a file growing a write at a time); the native
    appender's way is in test_trace_append.py."""
    path = tmp_path / "live.fzt"
    with TraceWriter(path, HEADER, appender=FileAppender) as w:
        reader = TraceReader(path)
        assert list(reader.poll()) == []
        for i in range(3):
            w.request(b"r%d" % i, ts=i)
        assert [r.raw for r in reader.poll()] == [b"r0", b"r1", b"r2"]
        assert list(reader.poll()) == [] and reader.tail is None
        w.reply(b"x", ts=9)
        # a record being written: half of it is in the file
        record = packed([1, 10, b"half written"])
        with open(path, "ab") as f:
            f.write(record[:5])
            f.flush()
            assert [(r.index, r.raw) for r in reader.poll()] == [(3, b"x")]
            assert reader.tail is not None and "incomplete record (5 bytes)" in reader.tail
            assert list(reader.poll()) == []
            f.write(record[5:])
    got = list(reader.poll())
    assert [(r.index, r.raw) for r in got] == [(4, b"half written")]
    assert reader.tail is None and reader.good_records == 5
    assert [r.raw for r in reader] == [b"r0", b"r1", b"r2", b"x", b"half written"]


def test_stops_early_and_resumes(small: Small) -> None:
    path, spans = small
    reader = TraceReader(path)
    first = []
    for record in reader:
        first.append(record)
        if len(first) == 5:
            break
    assert reader.good_records == 5 and reader.good_bytes == spans[4][1]
    rest = list(reader.poll())
    assert [r.index for r in first + rest] == list(range(len(spans)))


def test_header_can_hold_large_fields(tmp_path: Path) -> None:
    path = tmp_path / "big.fzt"
    argv = ["x" * 1000] * 200  # a 200 KB header spans several reads
    with TraceWriter(path, {"argv": argv}) as w:
        w.request(b"a")
    reader = TraceReader(path)
    assert reader.header["argv"] == argv and [r.raw for r in reader] == [b"a"]


def test_large_record(tmp_path: Path) -> None:
    path = tmp_path / "big.fzt"
    payload = os.urandom(5 << 20)  # bigger than any read chunk
    with TraceWriter(path) as w:
        w.reply(payload, ts=1)
        w.reply(b"after", ts=2)
    assert [r.raw for r in TraceReader(path)] == [payload, b"after"]
    with TraceIndex.open(path) as idx:
        assert idx.record(0).raw == payload and idx.record(1).raw == b"after"


def test_msgpack_meta_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    with open(path, "wb") as f:
        f.write(_header())
        f.write(packed([2, 1, b"r", {"len": 99, b"bin key": 1}]))
    (record,) = TraceReader(path)
    assert record.meta == {"len": 99, b"bin key": 1} and record.true_len == 99
    assert msgpack.version >= (1, 0)
