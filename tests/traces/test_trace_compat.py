"""Format versions: a frozen v1 trace still reads, and the upgrade chain is wired in.

`tests/data/synthetic-v1.fzt` was written once by `synthetic_trace(path, 300, seed=18)` at
format 1 (fusetrace 0.1.0) and must never be regenerated: it stands for every v1 trace
in the field. When format 2 arrives, freeze a v2 file beside it and keep both tests.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from trace_helpers import packed

from traces import FORMAT_VERSION, Kind, TraceIndex, TraceReader, TraceReadError, compat

FROZEN_V1 = Path(__file__).resolve().parents[1] / "data" / "synthetic-v1.fzt"


def test_chain_reaches_the_current_format() -> None:
    assert set(compat.CONVERTERS) == set(range(1, FORMAT_VERSION))


def test_frozen_v1_trace_reads() -> None:
    reader = TraceReader(FROZEN_V1)
    records = list(reader)
    assert reader.tail is None and reader.file_format == 1
    header = reader.header
    assert (header["magic"], header["format"], header["tool"]) == ("fusetrace", 1, "0.1.0")
    assert (header["seed"], header["snaplen"], header["argv"][0]) == (18, 64, "passthrough_hp")
    assert Counter(r.kind for r in records) == {Kind.REQUEST: 147, Kind.REPLY: 147,
                                                Kind.IOCTL: 5, Kind.EVENT: 1}
    first, last = records[0], records[-1]
    assert first.raw is not None and first.raw[4] == 26 and first.altered  # INIT, flag masked
    assert last.meta == {"event": "session_end", "records": 300}
    assert sum(r.truncated for r in records) == 8
    assert sum(r.ts for r in records) == 300000944378795
    ioctl = next(r for r in records if r.is_ioctl)
    assert ioctl.meta["cmd"] == 0x4010E501 and ioctl.meta["path"] == "/srv/data/node33"


def test_frozen_v1_trace_indexes(tmp_path: Path) -> None:
    path = tmp_path / FROZEN_V1.name  # the index cache must not land in tests/data
    shutil.copyfile(FROZEN_V1, path)
    with TraceIndex.open(path) as idx:
        assert len(idx) == 300 and idx.tail is None
        assert [idx.record(i) for i in range(300)] == list(TraceReader(FROZEN_V1))


def _pretend_format_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A format 2 that renamed REPLY meta "len" to "true_len"; v1 files upgrade on read."""

    def header(h: dict[str, Any]) -> dict[str, Any]:
        return {**h, "format": 2, "upgraded_from": h["format"]}

    def record(obj: Any) -> Any:
        if obj[0] == 2 and len(obj) == 4 and "len" in obj[3]:
            meta = dict(obj[3])
            meta["true_len"] = meta.pop("len")
            return type(obj)([*obj[:3], meta])
        return obj

    monkeypatch.setattr(compat, "FORMAT_VERSION", 2)
    monkeypatch.setattr(compat, "CONVERTERS", {1: compat.Converter(header, record)})


def test_old_files_go_through_the_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plain = list(TraceReader(FROZEN_V1))
    _pretend_format_2(monkeypatch)
    reader = TraceReader(FROZEN_V1)
    upgraded = list(reader)
    assert reader.file_format == 1 and reader.header["format"] == 2
    assert reader.header["upgraded_from"] == 1 and reader.tail is None
    cut = [r for r in upgraded if "true_len" in r.meta]
    assert len(cut) == sum(1 for r in plain if r.is_reply and "len" in r.meta) > 0
    assert all("len" not in r.meta for r in upgraded if r.is_reply)
    path = tmp_path / "v1.fzt"
    shutil.copyfile(FROZEN_V1, path)
    with TraceIndex.open(path) as idx:
        assert [idx.record(i) for i in range(len(idx))] == upgraded


def test_a_failing_upgrade_is_a_clean_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(obj: Any) -> Any:
        raise KeyError("no such field")

    monkeypatch.setattr(compat, "FORMAT_VERSION", 2)
    monkeypatch.setattr(compat, "CONVERTERS", {1: compat.Converter(lambda h: h, broken)})
    reader = TraceReader(FROZEN_V1)
    assert list(reader) == []
    assert reader.tail is not None and "no such field" in reader.tail


def test_newer_format_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "future.fzt"
    path.write_bytes(packed({"magic": "fusetrace", "format": FORMAT_VERSION + 1}) + packed([7]))
    with pytest.raises(TraceReadError, match=rf"written by a newer fusetrace \(format "
                                             rf"{FORMAT_VERSION + 1}\); upgrade fusetrace"):
        TraceReader(path)
