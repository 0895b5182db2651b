"""The C loops (`traces/_scan.c`) and their Python twins agree: the index builds the same
rows and pairs the same replies, the reader's `arrays()` passes the same records, and
both stop at the same bad record with the same note; and the C loops took records in
every comparison (a build that fell back to Python would compare Python with itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from c_extensions import Taken, c_extension
from test_trace_hostile import _HEADER, _REQ, BAD
from trace_helpers import out_header, packed

import traces.index as index_module
from traces import TraceIndex, TraceReader, native
from traces.testing import synthetic_trace

c_extension("traces._scan")


def _built(path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[TraceIndex, int]:
    """The index, and how many rows the C loop made."""
    rows = Taken(native.rows, lambda args, result: result[0] - args[2])  # stop - start
    with monkeypatch.context() as m:
        m.setattr(native, "rows", rows if fast else None)
        idx = TraceIndex(index_module.open_trace(path), [])
        idx.refresh()
    return idx, rows.total


def _arrays(path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """What the reader passes, and how many records the C check passed."""
    plain = Taken(native.plain_until, lambda args, result: result - args[1])  # stop - start
    with monkeypatch.context() as m:
        m.setattr(native, "plain_until", plain if fast else None)
        with TraceReader(path) as reader:
            got = list(reader.arrays())
            return (got, reader.tail, reader.good_records, reader.good_bytes), plain.total


def _same(path: Path, monkeypatch: pytest.MonkeyPatch) -> TraceIndex:
    (fast, checked), (slow, _) = _arrays(path, True, monkeypatch), _arrays(path, False, monkeypatch)
    assert fast == slow
    assert checked > 0, "the C check passed no record: Python was compared with itself"
    (c, made), (py, _) = _built(path, True, monkeypatch), _built(path, False, monkeypatch)
    assert made > 0, "the C loop made no row: Python was compared with itself"
    assert {k: list(v) for k, v in c._cols.items()} == {k: list(v) for k, v in py._cols.items()}
    assert (c._pending, c.tail, c._end) == (py._pending, py.tail, py._end)
    return c


def test_a_synthetic_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.fzt"
    synthetic_trace(path, 30_000, seed=3)
    idx = _same(path, monkeypatch)
    assert len(idx) == 30_000 and idx.tail is None


EDGES: list[list[Any]] = [
    [1, 0, b"short"],  # a header cut short: zeros
    [2, 1, b"x" * 15],
    [1, 2, _REQ, {"len": len(_REQ)}],  # the true length: still the fast path
    [1, 3, _REQ, {"len": (1 << 32) - 1}],
    [2, 4, out_header(2, -2)],  # answers _REQ's unique 2
    [2, 5, out_header(2)],  # a second answer: no opcode left
    [2, (1 << 63) - 1, out_header(0, 1)],  # a notification at the last timestamp
    [1, 6, _REQ, {"len": len(_REQ), "original": _REQ}],  # more meta: Python's
    [3, 7, {"cmd": 0x4004E502}],
    [4, 8, {"event": "x"}],
    [True, 9, _REQ],  # bool is no kind: Python's problem() says so
]


def test_edges_and_every_bad_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.fzt"
    path.write_bytes(_HEADER + b"".join(packed(r) for r in EDGES[:-1]))
    idx = _same(path, monkeypatch)
    assert len(idx) == len(EDGES) - 1 and idx.tail is None
    assert [idx.opcode(i) for i in range(6)] == [0, 0, 1, 1, 1, 0]
    for k, obj in enumerate([EDGES[-1], [1, 1 << 63, _REQ], [1, -1, _REQ], [7, 1, _REQ],
                             *(bad for bad, _ in BAD)]):
        bad = tmp_path / f"bad{k}.fzt"
        bad.write_bytes(_HEADER + packed([1, 0, _REQ]) + packed(obj) + packed([1, 0, _REQ]))
        idx = _same(bad, monkeypatch)
        assert len(idx) == 1 and idx.tail is not None and "bad record" in idx.tail
