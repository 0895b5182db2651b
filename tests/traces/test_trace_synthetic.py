"""The synthetic trace factory: exact counts, determinism, and messages the dissectors accept."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dissectors import SessionDecoder
from dissectors.constants import NO_REPLY_OPCODES, Opcode
from traces import Kind, TraceIndex, TraceReader
from traces.testing import synthetic_trace


@pytest.mark.parametrize("n", [0, 1, 2, 37])
def test_exact_record_count(tmp_path: Path, n: int) -> None:
    path = tmp_path / "s.fzt"
    header = synthetic_trace(path, n)
    reader = TraceReader(path)
    records = list(reader)
    assert len(records) == n and reader.tail is None and reader.header == header
    if n:
        assert records[-1].event == "session_end"


def test_same_seed_same_records(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{name}.fzt" for name in "abc")
    synthetic_trace(a, 500, seed=3)
    synthetic_trace(b, 500, seed=3)
    synthetic_trace(c, 500, seed=4)
    assert list(TraceReader(a)) == list(TraceReader(b)) != list(TraceReader(c))


def test_messages_decode_and_pair(tmp_path: Path) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 5000, seed=9)
    decoder = SessionDecoder()
    opcodes: Counter[str] = Counter()
    outstanding: dict[int, int] = {}
    features: Counter[str] = Counter()
    for record in TraceReader(path):
        if record.kind is Kind.REQUEST:
            message = decoder.feed_request(record.raw or b"")
            assert not message.brief.reason, message.text
            opcodes[Opcode(message.brief.opcode).name] += 1
            if message.brief.opcode not in NO_REPLY_OPCODES:
                outstanding[message.brief.unique] = message.brief.opcode
        elif record.kind is Kind.REPLY:
            message = decoder.feed_reply(record.raw or b"")
            assert not message.brief.reason, message.text
            if message.brief.unique:
                assert outstanding.pop(message.brief.unique) == message.brief.opcode
            else:
                features["notification"] += 1
            features["error"] += message.brief.error < 0
        elif record.kind is Kind.IOCTL:
            features["ioctl"] += 1
        features["truncated"] += record.truncated
        features["altered"] += record.altered
    assert len(outstanding) <= 2  # only requests whose replies fall past the end
    assert decoder.ctx.dialect.value == "mainline"  # INIT negotiated passthrough
    assert set(opcodes) == {"INIT", "LOOKUP", "GETATTR", "OPEN", "READ", "WRITE", "RELEASE",
                            "FORGET"}
    assert all(features[f] > 0 for f in ("notification", "error", "ioctl", "truncated"))
    assert features["altered"] == 1


def test_indexes_with_pairs(tmp_path: Path) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 2000, seed=2)
    with TraceIndex.open(path) as idx:
        replies = [i for i in range(len(idx)) if idx.kind(i) is Kind.REPLY and idx.unique(i)]
        assert replies and all(idx.opcode(i) for i in replies)
