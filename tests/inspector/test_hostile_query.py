"""Filters typed (or pasted) by anyone: nesting is bounded with a clear error, and long
and/or chains evaluate without deep recursion."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.query import MAX_NESTING, QueryContext, QueryError, parse
from traces import TraceIndex
from traces.testing import synthetic_trace


@pytest.mark.parametrize("text", [
    "(" * 5000 + "err" + ")" * 5000,
    "not " * 5000 + "err",
    "(not " * 3000 + "err" + ")" * 3000,
])
def test_deep_nesting_is_a_filter_error(text: str) -> None:
    with pytest.raises(QueryError, match=f"nested more than {MAX_NESTING} deep") as err:
        parse(text)
    assert err.value.pointer().rstrip().endswith("^")


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse("(" * MAX_NESTING + "err" + ")" * MAX_NESTING).text
    assert parse("not " * MAX_NESTING + "err").text


def test_a_long_chain_is_flat(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    synthetic_trace(path, 300, seed=2)
    with TraceIndex.open(path) as idx:
        ctx = QueryContext(idx)
        many = parse(" or ".join(["op=OPEN"] * 20000) + " and " + " and ".join(["kind=request"] * 20000))
        assert list(many.select(ctx)) == list(parse("op=OPEN").select(ctx))
