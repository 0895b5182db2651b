"""Index: build, cache, invalidation, extension, random access, pairing, truncation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trace_helpers import HEADER, in_header, out_header, packed

from traces import Kind, Row, TraceIndex, TraceReader, TraceReadError, TraceWriter
from traces.testing import synthetic_trace

Small = tuple[Path, list[tuple[int, int]]]


def test_record_i_equals_the_readers(tmp_path: Path) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 3000, seed=4)
    records = list(TraceReader(path))
    with TraceIndex.open(path) as idx:
        assert len(idx) == 3000 and idx.tail is None and idx.source == "built"
        assert idx.header == TraceReader(path).header
        for i in range(0, 3000, 7):
            assert idx.record(i) == records[i]
        assert idx.record(-1) == records[-1] and idx.record(-1).event == "session_end"
        for i in (0, 1, 1500, 2999):
            r = records[i]
            row = idx.row(i)
            assert (row.offset, row.ts, row.kind) == (r.offset, r.ts, r.kind)
            assert (idx.offset(i), idx.ts(i), idx.kind(i)) == (r.offset, r.ts, r.kind)
            assert row == Row(idx.offset(i), idx.ts(i), idx.kind(i), idx.opcode(i), idx.unique(i),
                              idx.nodeid(i), idx.error(i))
        assert list(idx.column("offset", 10, 20)) == [r.offset for r in records[10:20]]
        assert list(idx.column("kind")) == [r.kind for r in records]
        with pytest.raises(IndexError):
            idx.record(3000)
        with pytest.raises(IndexError):
            idx.row(-3001)


def test_columns_and_reply_pairing(small: Small) -> None:
    path, _ = small
    records = list(TraceReader(path))
    with TraceIndex.open(path) as idx:
        rows = [idx.row(i) for i in range(len(idx))]
    request_op = {}
    for record, row in zip(records, rows):
        raw = record.raw or b""
        if record.is_request:
            opcode, unique = int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[8:16], "little")
            request_op[unique] = opcode
            assert (row.opcode, row.unique, row.nodeid, row.error) == (
                opcode, unique, int.from_bytes(raw[16:24], "little"), 0)
        elif record.is_reply:
            unique = int.from_bytes(raw[8:16], "little")
            error = int.from_bytes(raw[4:8], "little", signed=True)
            assert (row.unique, row.error, row.nodeid) == (unique, error, 0)
            assert row.opcode == (request_op.pop(unique, 0) if unique else 0)
        else:
            assert row[3:] == (0, 0, 0, 0)
    by_unique = {row.unique: row for row in rows if row.kind == Kind.REPLY}
    assert by_unique[2].opcode == 26  # INIT
    assert by_unique[0].opcode == 0 and by_unique[0].error == 2  # notification: notify code
    assert by_unique[99].opcode == 0 and by_unique[99].error == -22  # unknown unique
    assert any(row.opcode == 15 and row.kind == Kind.REPLY for row in rows)


def test_out_of_order_replies_and_forget(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    with TraceWriter(path) as w:
        w.request(in_header(1, 10, 1, b"a\0"))
        w.request(in_header(3, 12, 5))
        w.request(in_header(2, 14, 5, bytes(8)))  # FORGET: no reply will come
        w.reply(out_header(12))
        w.reply(out_header(10, -2))
        w.reply(out_header(14))  # a reply to a FORGET is unexpected: unknown
        w.request(b"short")
        w.reply(b"short")
    with TraceIndex.open(path) as idx:
        assert [(idx.opcode(i), idx.unique(i)) for i in range(len(idx))] == [
            (1, 10), (3, 12), (2, 14), (3, 12), (1, 10), (0, 14), (0, 0), (0, 0)]
        assert idx.error(4) == -2


def test_cached_then_invalidated(tmp_path: Path) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 500, seed=1)
    with TraceIndex.open(path) as idx:
        assert idx.source == "built" and idx.cache_path == Path(str(path.resolve()) + ".idx")
        rows = [idx.row(i) for i in range(len(idx))]
    stamp = idx.cache_path.stat().st_mtime_ns
    with TraceIndex.open(path) as again:
        assert again.source == "cache" and [again.row(i) for i in range(len(again))] == rows
    assert idx.cache_path.stat().st_mtime_ns == stamp
    synthetic_trace(path, 500, seed=2)  # a different trace under the same name
    with TraceIndex.open(path) as rebuilt:
        assert rebuilt.source == "built" and len(rebuilt) == 500
        assert [rebuilt.record(i) for i in range(500)] == list(TraceReader(path))


def test_same_size_rewrite_rebuilds(small: Small) -> None:
    path, spans = small
    TraceIndex.open(path).close()
    data = bytearray(path.read_bytes())
    start, _ = spans[3]
    data[start + 1] = 4  # REQUEST → EVENT kind byte: record 3 becomes a bad record
    path.write_bytes(bytes(data))
    with TraceIndex.open(path) as idx:
        assert idx.source == "built" and len(idx) == 3
        assert idx.tail is not None and "bad record" in idx.tail


def test_extended_when_the_trace_grows(tmp_path: Path) -> None:
    path = tmp_path / "live.fzt"
    with TraceWriter(path, HEADER) as w:
        w.request(in_header(1, 2, 1, b"f\0"), ts=1)
    later = packed([2, 2, out_header(2)]) + packed([1, 3, in_header(3, 4, 7)]) \
        + packed([2, 4, out_header(4)])
    with open(path, "ab") as f:
        f.write(later[:3])  # the reply is being written when the index is built
    with TraceIndex.open(path) as idx:
        assert len(idx) == 1 and "incomplete" in (idx.tail or "")
    with open(path, "ab") as f:
        f.write(later[3:])
    with TraceIndex.open(path) as grown:
        assert grown.source == "extended" and grown.tail is None
        assert [(grown.kind(i), grown.opcode(i)) for i in range(len(grown))] == [
            (Kind.REQUEST, 1), (Kind.REPLY, 1), (Kind.REQUEST, 3), (Kind.REPLY, 3)]
        rows = [grown.row(i) for i in range(len(grown))]
    os.unlink(str(path.resolve()) + ".idx")
    with TraceIndex.open(path) as fresh:
        assert fresh.source == "built" and [fresh.row(i) for i in range(len(fresh))] == rows


def test_refresh_picks_up_appended_records(tmp_path: Path) -> None:
    path = tmp_path / "live.fzt"
    with TraceWriter(path) as w:
        w.request(in_header(14, 2, 3), ts=1)
        idx = TraceIndex.open(path)
        assert len(idx) == 1 and idx.refresh() == 0
        w.reply(out_header(2, 0, bytes(16)), ts=2)
        w.event("note", ts=3)
        assert idx.refresh() == 2
        assert (idx.opcode(1), idx.kind(2)) == (14, Kind.EVENT) and idx.record(2).event == "note"
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(TraceReadError, match="shrank"):
        idx.refresh()
    with pytest.raises(TraceReadError, match="record 2"):
        idx.record(2)
    idx.close()


def test_truncated_trace(small: Small) -> None:
    path, spans = small
    cut = spans[10][0] + 3
    with open(path, "r+b") as f:
        f.truncate(cut)
    reader = TraceReader(path)
    records = list(reader)
    with TraceIndex.open(path) as idx:
        assert len(idx) == 10 == len(records) and idx.tail == reader.tail
        assert idx.tail == f"trace cut at byte {spans[10][0]} after 10 good records: " \
                           f"incomplete record (3 bytes)"
        assert [idx.record(i) for i in range(10)] == records
    with TraceIndex.open(path) as cached:
        assert cached.source == "cache" and cached.tail == reader.tail


def test_falls_back_to_cache_home(small: Small, private_cache_home: Path) -> None:
    path, spans = small
    Path(str(path.resolve()) + ".idx").mkdir()  # the beside location cannot be written
    with TraceIndex.open(path) as idx:
        assert idx.cache_path is not None
        assert idx.cache_path.parent == private_cache_home / "fusetrace"
        assert idx.cache_path.name.endswith("-small.fzt.idx")
    with TraceIndex.open(path) as again:
        assert again.source == "cache" and again.cache_path == idx.cache_path
        assert len(again) == len(spans)
    with TraceIndex.open(path, cache_dir=path.parent / "elsewhere") as other:
        assert other.source == "built" and other.cache_path.parent == path.parent / "elsewhere"


def test_index_works_without_any_cache(small: Small, tmp_path: Path) -> None:
    path, spans = small
    Path(str(path.resolve()) + ".idx").mkdir()
    blocker = tmp_path / "file-not-dir"
    blocker.write_bytes(b"")
    with TraceIndex.open(path, cache_dir=blocker / "sub") as idx:
        assert idx.cache_path is None and len(idx) == len(spans)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_broken_cache_is_rebuilt(small: Small, damage: str) -> None:
    path, spans = small
    with TraceIndex.open(path) as idx:
        cache = idx.cache_path
    assert cache is not None
    data = cache.read_bytes()
    cache.write_bytes({"truncate": data[:-5], "garbage": b"\xc1" * 50, "empty": b""}[damage])
    with TraceIndex.open(path) as again:
        assert again.source == "built" and len(again) == len(spans)
    with TraceIndex.open(path) as third:
        assert third.source == "cache"


def test_progress_reports_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 30000, seed=5)
    calls: list[tuple[int, int]] = []
    with TraceIndex.open(path, progress=lambda done, total: calls.append((done, total))):
        pass
    size = path.stat().st_size
    assert len(calls) >= 2 and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    calls.clear()
    TraceIndex.open(path, progress=lambda done, total: calls.append((done, total))).close()
    assert calls == []  # from the cache: nothing to scan


def test_cache_mode_is_private(small: Small) -> None:
    path, _ = small
    old = os.umask(0)
    try:
        with TraceIndex.open(path) as idx:
            assert idx.cache_path is not None
            assert idx.cache_path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
