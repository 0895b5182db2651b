"""Fuzz: whatever the bytes, readers and the index raise only TraceReadError, agree, and end."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trace_helpers import write_small

from traces import TraceIndex, TraceReader, TraceReadError

_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
_DIR = tempfile.TemporaryDirectory(prefix="fusetrace-fuzz-")
_SMALL = Path(_DIR.name) / "small.fzt"
_SPANS = write_small(_SMALL)
_DATA = _SMALL.read_bytes()


def _check(data: bytes, tmp: Path) -> tuple[int, str | None] | None:
    """Read `data` both ways; returns (records, tail), or None when it is not a trace."""
    path = tmp / "fuzz.fzt"
    path.write_bytes(data)
    try:
        reader = TraceReader(path)
    except TraceReadError:
        return None
    with reader:
        records = list(reader)
        assert reader.good_records == len(records)
        assert reader.good_bytes <= len(data)
        # a clean end: after the last record only zeros (space allocated ahead) and
        # spans noted as holes
        rest = bytearray(data[reader.good_bytes:])
        for start, end in reader.holes:
            if start >= reader.good_bytes:
                rest[start - reader.good_bytes:end - reader.good_bytes] = bytes(end - start)
        assert (reader.tail is None) == (not rest.strip(b"\0"))
    Path(str(path.resolve()) + ".idx").unlink(missing_ok=True)  # examples share one name
    with TraceIndex.open(path, cache_dir=tmp) as idx:
        assert len(idx) == len(records) and idx.tail == reader.tail
        assert idx.holes == reader.holes
        for i in range(0, len(idx), 5):
            assert idx.record(i) == records[i]
    return len(records), reader.tail


@_SETTINGS
@given(st.binary(max_size=300))
def test_random_files(tmp_path: Path, data: bytes) -> None:
    _check(data, tmp_path)


@_SETTINGS
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_after_the_header(tmp_path: Path, tail: bytes) -> None:
    header_end = _SPANS[0][0]
    result = _check(_DATA[:header_end] + tail, tmp_path)
    assert result is not None


@_SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(_DATA) - 1), st.integers(1, 255)),
                min_size=1, max_size=4))
def test_random_flips(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_DATA)
    for offset, xor in flips:
        data[offset] ^= xor
    result = _check(bytes(data), tmp_path)
    first = min(offset for offset, _ in flips)
    if result is not None and first >= _SPANS[0][0]:
        count, _ = result
        intact = sum(1 for _, end in _SPANS if end <= first)
        assert count >= intact  # records before the first damaged byte are all there


@_SETTINGS
@given(st.integers(0, len(_DATA)), st.binary(max_size=50))
def test_cut_and_spliced(tmp_path: Path, cut: int, junk: bytes) -> None:
    _check(_DATA[:cut] + junk + _DATA[cut:], tmp_path)
