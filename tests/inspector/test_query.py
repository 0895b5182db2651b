"""The filter language: parse errors that say where and what, and selections checked
against the decoder's own view of the same trace (`timeline.entries`), not against the
index columns the filter reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
import pytest

from dissectors.constants import Opcode
from inspector.lifecycles import analyse
from inspector.query import QueryContext, QueryError, parse
from inspector.timeline import Entry, entries
from traces import Kind, TraceIndex, TraceReader
from traces.testing import synthetic_trace

FUSETRACE = [sys.executable, "-m", "inspector.cli"]


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("query") / "t.fzt"
    synthetic_trace(path, 3000, seed=5)
    return path


@pytest.fixture(scope="module")
def decoded(trace: Path) -> list[Entry]:
    with TraceReader(trace) as reader:
        return list(entries(reader))


@pytest.fixture(scope="module")
def ctx(trace: Path) -> QueryContext:
    return QueryContext(TraceIndex.open(trace, cache_dir=trace.parent))


def reply_of(decoded: list[Entry]) -> dict[int, Entry]:
    return {e.request_index: e for e in decoded if e.request_index is not None}


def select(ctx: QueryContext, text: str) -> list[int]:
    return list(parse(text).select(ctx))


# --- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, column, expected", [
    ("op=", 4, "expected a value for op, found end of filter"),
    ("op=FOO", 4, "an opcode name"),
    ("lat>10", 5, "a duration with its unit"),
    ("nodeid", 7, "a comparison after 'nodeid'"),
    ("(op=OPEN", 9, "expected ')'"),
    ("op=OPEN err", 9, "expected 'and', 'or' or end of filter, found 'err'"),
    ("colour=red", 1, "unknown field 'colour'"),
    ("op>OPEN", 3, "op takes = or !="),
    ("", 1, "expected a filter"),
    ("op=OPEN and", 12, "expected a field"),
    ("n<1,2", 4, "a list of values needs = or !="),
    ("err=EWHAT", 5, "an errno name"),
    ("op=OPEN $", 9, "unexpected character '$'"),
    ("not", 4, "expected a field"),
])
def test_parse_errors_name_the_column_and_what_was_expected(text: str, column: int,
                                                            expected: str) -> None:
    with pytest.raises(QueryError) as info:
        parse(text)
    err = info.value
    assert err.pos == column - 1
    assert str(err).startswith(f"filter error at column {column}: ")
    assert expected in str(err)
    assert err.pointer().splitlines()[-1] == " " * (column - 1) + "^"


def test_names_are_case_insensitive_and_aliases_work(ctx: QueryContext) -> None:
    assert select(ctx, "OP=open AND Err") == select(ctx, "opcode=OPEN and error")
    assert select(ctx, "latency>=20us") == select(ctx, "lat>=20000ns")
    assert select(ctx, "op=FUSE_DEV_IOC_BACKING_OPEN") == select(ctx, "op=backing_open")


# --- column predicates against the decoder -----------------------------------------------

def test_op_selects_requests_and_their_replies(ctx: QueryContext, decoded: list[Entry]) -> None:
    wanted = {Opcode.OPEN, Opcode.CREATE}
    expected = sorted(e.record.index for e in decoded
                      if e.message is not None and e.message.brief.direction != "notify"
                      and e.message.brief.opcode in wanted)
    got = select(ctx, "op=OPEN,CREATE")
    assert got == expected and got


def test_nodeid_and_op(ctx: QueryContext, decoded: list[Entry]) -> None:
    opens = [e for e in decoded if e.record.is_request and e.message is not None
             and e.message.brief.opcode == Opcode.OPEN]
    node = opens[len(opens) // 2].message.brief.nodeid  # type: ignore[union-attr]
    replies = reply_of(decoded)
    expected = sorted({i for e in opens if e.message.brief.nodeid == node  # type: ignore[union-attr]
                       for i in (e.record.index, replies[e.record.index].record.index)})
    assert select(ctx, f"op=OPEN and nodeid={node}") == expected


def test_err_and_errno_names(ctx: QueryContext, decoded: list[Entry]) -> None:
    failed = [e for e in decoded if e.record.is_reply and e.message is not None
              and e.message.brief.direction == "reply" and e.message.brief.error < 0]
    expected = sorted({i for e in failed for i in (e.record.index, e.request_index)})
    assert select(ctx, "err") == expected
    enoent = sorted({i for e in failed if e.message.brief.error == -2  # type: ignore[union-attr]
                     for i in (e.record.index, e.request_index)})
    assert select(ctx, "err=ENOENT") == enoent == select(ctx, "err=2")
    assert 0 < len(enoent) < len(expected), "the synthetic trace has ENOENT and EACCES"
    assert select(ctx, "err=ENOENT,EACCES") == expected


def test_latency_pairs_by_unique(ctx: QueryContext, decoded: list[Entry]) -> None:
    slow = [e for e in decoded if e.latency_ns is not None and e.latency_ns > 30_000]
    expected = sorted({i for e in slow for i in (e.record.index, e.request_index)})
    assert select(ctx, "lat>30us") == expected and expected
    assert select(ctx, "lat>30us or lat<=30us") == sorted(
        {i for e in decoded if e.latency_ns is not None for i in (e.record.index, e.request_index)})


def test_unique_pid_kind_and_record_numbers(ctx: QueryContext, decoded: list[Entry]) -> None:
    some = next(e for e in decoded[500:] if e.latency_ns is not None)
    unique = some.message.brief.unique  # type: ignore[union-attr]
    assert select(ctx, f"unique={unique}") == [some.request_index, some.record.index]
    pids = {e.record.index for e in decoded
            if (e.record.is_request and e.message.brief.pid == 4242)  # type: ignore[union-attr]
            or (e.record.is_ioctl and e.record.meta.get("pid") == 4242)}
    assert set(select(ctx, "pid=4242")) >= pids and pids
    ioctls = [e.record.index for e in decoded if e.record.kind is Kind.IOCTL]
    assert select(ctx, "kind=ioctl") == ioctls and ioctls
    assert select(ctx, "kind=event") == [e.record.index for e in decoded if e.record.is_event]
    notifies = [e.record.index for e in decoded
                if e.message is not None and e.message.brief.direction == "notify"]
    assert select(ctx, "kind=notify") == notifies
    assert select(ctx, "n>=2990") == list(range(2990, 3000))
    assert select(ctx, "n<3 or n=10,20") == [0, 1, 2, 10, 20]


def test_ioctl_names(ctx: QueryContext, decoded: list[Entry]) -> None:
    closes = [e.record.index for e in decoded
              if e.ioctl is not None and e.ioctl.name == "FUSE_DEV_IOC_BACKING_CLOSE"]
    assert select(ctx, "op=BACKING_CLOSE") == closes and closes


def test_boolean_algebra(ctx: QueryContext) -> None:
    everything = list(range(3000))
    a, b = "op=LOOKUP", "err"
    assert select(ctx, f"not ({a} or {b})") == select(ctx, f"not {a} and not {b}")
    assert sorted(set(select(ctx, a)) | set(select(ctx, f"not {a}"))) == everything
    assert select(ctx, f"{a} and {b}") == sorted(set(select(ctx, a)) & set(select(ctx, b)))
    assert select(ctx, "op!=LOOKUP") == select(ctx, "not op=LOOKUP")
    assert select(ctx, f"({a} or op=GETATTR) and {b}") == sorted(
        set(select(ctx, f"{a} and {b}")) | set(select(ctx, f"op=GETATTR and {b}")))


def test_a_slice_selects_what_the_whole_does_inside_it(ctx: QueryContext) -> None:
    whole = parse("op=READ or kind=ioctl")
    inside = [i for i in whole.select(ctx) if 1000 <= i < 2000]
    assert list(whole.select(ctx, 1000, 2000)) == inside


# --- lifecycle predicates against the analysis -------------------------------------------

def test_lifecycle_fields_select_their_records_and_partners(trace: Path, ctx: QueryContext,
                                                            decoded: list[Entry]) -> None:
    analysis = analyse(trace)
    partner = {e.record.index: e.request_index for e in decoded if e.request_index is not None}
    partner.update({v: k for k, v in list(partner.items())})
    for kind, word in (("backing", "backing"), ("fh", "fh"), ("node", "node")):
        life = analysis.lifecycles(kind)[1]
        key = hex(life.key) if kind == "fh" else str(life.key)
        gens = analysis.find(kind, life.key)
        expected = sorted({i for lc in gens for r in lc.records
                           for i in (r, partner.get(r, r))})
        assert select(ctx, f"{word}={key}") == expected, kind
    proofs = {i for a in analysis.anomalies for i in a.records}
    got = set(select(ctx, "anomaly"))
    assert proofs <= got
    assert got <= proofs | {partner[i] for i in proofs if i in partner}


# --- fusetrace show --filter -------------------------------------------------------------

def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSETRACE, *args], capture_output=True, text=True, timeout=60)


def test_show_filter_prints_the_matching_lines_of_show(trace: Path) -> None:
    every = run("show", str(trace)).stdout.splitlines()
    res = run("show", "--filter", "op=OPEN and err", str(trace))
    assert res.returncode == 0, res.stderr
    by_number = {int(line.split()[0]): line for line in every}
    got = res.stdout.splitlines()
    assert got and all(by_number[int(line.split()[0])] == line for line in got)
    assert all(" OPEN " in line for line in got)
    assert any("error=" in line for line in got)
    ranged = run("show", "-f", "op=OPEN", "-r", "0:500", str(trace)).stdout.splitlines()
    assert ranged and all(int(line.split()[0]) < 500 for line in ranged)


def test_show_filter_errors_are_one_line_and_exit_2(trace: Path, tmp_path: Path) -> None:
    res = run("show", "--filter", "op=OPEN and", str(trace))
    assert res.returncode == 2
    assert res.stderr.startswith("fusetrace: error: filter error at column 12: expected a field")
    assert "Traceback" not in res.stderr
    garbage = tmp_path / "garbage.fzt"
    garbage.write_bytes(b"\x00not a trace at all")
    res = run("show", "--filter", "err", str(garbage))
    assert res.returncode == 2 and "not a fusetrace trace" in res.stderr
    assert "Traceback" not in res.stderr
