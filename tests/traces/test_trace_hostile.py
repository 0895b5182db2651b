"""Crafted records: every field of every kind is checked when read, and a record that
fails stops the reader, the index and `record(i)` at the same place with a note naming
the field (a trace is untrusted input; what follows a bad record is not guessed at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from trace_helpers import in_header, out_header, packed

from traces import TraceIndex, TraceReadError, TraceReader
from traces.records import MAX_DEPTH, problem

_HEADER = packed({"magic": "fusetrace", "format": 1, "tool": "test", "created": 0})
_REQ = in_header(1, 2, 1, b"a\0")
_IOCTL = {"cmd": 0x4010E501, "arg": bytes(16), "result": 1, "errno": 0, "tid": 7, "pid": 7,
          "fd": 5, "path": "/src/f", "out": None}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD: list[tuple[list[Any], str]] = [
    ([3, 1, {**_IOCTL, "arg": 7}], "IOCTL arg must be bytes, found 7"),
    ([3, 1, {**_IOCTL, "cmd": -1}], "IOCTL cmd must be a 32-bit ioctl number"),
    ([3, 1, {**_IOCTL, "cmd": 1 << 40}], "IOCTL cmd must be a 32-bit ioctl number"),
    ([3, 1, {**_IOCTL, "result": "3"}], "IOCTL result must be a 64-bit integer"),
    ([3, 1, {**_IOCTL, "errno": -5}], "IOCTL errno must be an errno"),
    ([3, 1, {**_IOCTL, "errno": 1 << 20}], "IOCTL errno must be an errno"),
    ([3, 1, {**_IOCTL, "tid": [1]}], "IOCTL tid must be a thread id"),
    ([3, 1, {**_IOCTL, "pid": -1}], "IOCTL pid must be a process id"),
    ([3, 1, {**_IOCTL, "fd": "5"}], "IOCTL fd must be a file descriptor or nil"),
    ([3, 1, {**_IOCTL, "path": b"/src"}], "IOCTL path must be a string or nil"),
    ([3, 1, {**_IOCTL, "out": 0}], "IOCTL out must be bytes or nil"),
    ([3, 1, {"arg": b""}], "IOCTL record without a command number"),
    ([1, 1, _REQ, {"len": -1}], "REQUEST len must be a 32-bit length"),
    ([1, 1, _REQ, {"len": 1 << 32}], "REQUEST len must be a 32-bit length"),
    ([1, 1, _REQ, {"len": 3}], f"REQUEST len 3 is shorter than the {len(_REQ)} bytes kept"),
    ([1, 1, _REQ, {"original": "text"}], "REQUEST original must be bytes"),
    ([1, 1, _REQ, {"reason": 5}], "REQUEST reason must be a string"),
    ([2, 1, out_header(2), {"write_errno": True}], "REPLY write_errno must be an errno"),
    ([2, 1, out_header(2), {"fragments": [1, "2"]}], "REPLY fragments must be a list of lengths"),
    ([2, 1, out_header(2), {"fragments": 3}], "REPLY fragments must be a list of lengths"),
    ([4, 1, {"event": 4}], "EVENT event must be a string"),
    ([4, 1, {"name": "x"}], "EVENT record without a name"),
    ([4, 1, {"event": "reply_rejected", "unique": -1}], "EVENT unique must be a 64-bit unique"),
    ([4, 1, {"event": "reply_rejected", "opcode": "OPEN"}], "EVENT opcode must be an opcode or nil"),
    ([4, 1, {"event": "reply_rejected", "connection_gone": 1}],
     "EVENT connection_gone must be true or false"),
    ([4, 1, {"event": "x", "data": _nested(MAX_DEPTH + 1)}], "EVENT data is not plain data"),
    ([4, 1, {"event": "x", "data": msgpack.ExtType(5, b"e")}], "EVENT data is not plain data"),
    ([4, 1, {"event": "x", "data": {"k": [msgpack.ExtType(5, b"")]}}], "EVENT data is not plain"),
]


@pytest.mark.parametrize(("obj", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_field_stops_every_reader_at_that_record(tmp_path: Path, obj: list[Any],
                                                       message: str) -> None:
    path = tmp_path / "t.fzt"
    good = packed([1, 0, _REQ])
    path.write_bytes(_HEADER + good + packed(obj) + good)
    reader = TraceReader(path)
    assert len(list(reader)) == 1
    assert reader.tail is not None and message in reader.tail
    assert f"at byte {len(_HEADER) + len(good)} after 1 good records" in reader.tail
    assert len(list(reader.arrays())) == 1 and reader.tail is not None and message in reader.tail
    with TraceIndex.open(path) as idx:
        assert len(idx) == 1 and idx.tail is not None and message in idx.tail


GOOD: list[list[Any]] = [
    [3, 1, _IOCTL],
    [3, 1, {"cmd": 0x4004E502}],  # older recorders wrote fewer keys
    [3, 1, {**_IOCTL, "result": -1, "errno": 22, "fd": None, "path": None, "out": bytes(16),
            "note": "emulated"}],
    [1, 1, _REQ, {"len": len(_REQ), "original": _REQ, "reason": "masked", b"bin key": 1}],
    [2, 1, out_header(2), {"fragments": [16, 4096], "write_errno": 2}],
    [4, 1, {"event": "reply_rejected", "unique": 1 << 63, "opcode": None, "write_errno": 2,
            "connection_gone": True}],
    [4, 1, {"event": "server_start", "pid": 1, "argv": ["a", "b"], "signal": None,
            "data": _nested(MAX_DEPTH - 1), "when": 1.5}],
]


@pytest.mark.parametrize("obj", GOOD)
def test_records_writers_make_are_accepted(obj: list[Any]) -> None:
    assert problem(obj) is None


def test_a_record_with_meta_is_indexed_like_one_without(tmp_path: Path) -> None:
    """Records carrying meta leave the index's fast path: their columns must not change."""
    path = tmp_path / "t.fzt"
    path.write_bytes(_HEADER + packed([1, 5, _REQ, {"len": len(_REQ) + 9}])
                     + packed([2, 6, out_header(2, -2), {"write_errno": 2}])
                     + packed([4, 7, {"event": "x"}]))
    with TraceIndex.open(path) as idx:
        rows = [(idx.ts(i), int(idx.kind(i)), idx.opcode(i), idx.unique(i), idx.error(i))
                for i in range(len(idx))]
        assert idx.tail is None and idx.record(0).true_len == len(_REQ) + 9
    assert rows == [(5, 1, 1, 2, 0), (6, 2, 1, 2, -2), (7, 4, 0, 0, 0)]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("argv", "srv /mnt", "header argv must be a list of strings"),
    ("argv", ["srv", b"/mnt"], "header argv must be a list of strings"),
    ("options", [1], "header options must be a list of strings"),
    ("snaplen", -1, "header snaplen must be a 32-bit length"),
    ("kernel", b"6.18", "header kernel must be a string"),
    ("mountpoint", 5, "header mountpoint must be a string or nil"),
    ("mount", {"flags": "ro"}, "header mount must be a map of"),
    ("mount", [1], "header mount must be a map of"),
    ("extra", msgpack.ExtType(1, b""), "header extra is not plain data"),
])
def test_a_bad_header_field_is_one_read_error(tmp_path: Path, field: str, value: Any,
                                              message: str) -> None:
    path = tmp_path / "t.fzt"
    path.write_bytes(packed({"magic": "fusetrace", "format": 1, field: value})
                     + packed([1, 0, _REQ]))
    with pytest.raises(TraceReadError, match=f"not a valid trace header: {message}"):
        TraceReader(path)
    with pytest.raises(TraceReadError, match=message):
        TraceIndex.open(path)
