"""The detail pane's trees: every byte of a message belongs to exactly one field, so the
hex highlighting of a field is its own bytes and nothing else."""

from __future__ import annotations

from pathlib import Path

from inspector.exchanges import Exchanges
from traces import TraceIndex
from tui.decoded import Span, exchange, hexdump_lines


def leaves(span: Span) -> list[Span]:
    if not span.children:
        return [span]
    return [leaf for child in span.children for leaf in leaves(child)]


def check_tiles(trace: Path) -> int:
    """Every request/reply/ioctl tree's leaves tile its bytes; returns how many were checked."""
    idx = TraceIndex.open(trace)
    pairs = Exchanges(idx)
    pairs.update()
    checked = 0
    for i in range(len(idx)):
        for part in exchange(idx, pairs, i):
            if part.record.index != i or part.role == "event":
                continue
            layers = [c for c in part.tree.children if c.label != "recorder's notes"]
            spans = sorted((leaf.start, leaf.end) for layer in layers for leaf in leaves(layer)
                           if leaf.start is not None and leaf.end is not None
                           and leaf.end > leaf.start)
            at = 0
            for start, end in spans:
                assert start == at, (i, part.role, spans)
                at = end
            assert at == len(part.data), (i, part.role, at, len(part.data))
            checked += 1
    return checked


def test_field_ranges_tile_every_message_of_a_synthetic_trace(synthetic: Path) -> None:
    assert check_tiles(synthetic) > 350


def test_field_ranges_tile_every_message_of_a_recorded_trace(recorded: Path) -> None:
    assert check_tiles(recorded) > 50


def test_hexdump_marks_exactly_the_range() -> None:
    data = bytes(range(40))
    lines = hexdump_lines(data, 14, 18)
    marked = [line[a:b] for line, marks in lines for a, b in marks]
    assert marked == ["0e 0f", "..", "10 11", ".."]
    assert lines[1][0].startswith("000010  10 11 12")
