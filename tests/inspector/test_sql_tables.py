"""The sql tables on synthetic traces: each column holds what the dissectors decode, the
build gives the same rows whatever its chunk size, the lifecycle tables are the lifecycle
pass's, a Parquet export reads back as the same tables, names and types are the schema's
everywhere, cut traces give their whole records and say so, bad SQL is one line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from dissectors.constants import (FOPEN_PASSTHROUGH, FUSE_INIT_EXT,
                                  FUSE_PASSTHROUGH_ANDROID_EXT, Opcode)
from dissectors.fields import errno_name
from dissectors.summary import opcode_name
from inspector.cli import main as cli_main
from inspector.damaged import DAMAGED, warning
from inspector.lifecycles import analyse
from inspector.lifecycles import wire
from inspector.sql import build, sources
from inspector.sql.schema import PARTITION, TABLES, help_text, schema_document
from inspector.sql.sources import read_tables, trace_names
from inspector.timeline import entries
from traces import Kind, TraceReader
from traces.testing import synthetic_trace

from test_lifecycles import OFFERED, Session
from test_hostile_traces import _apply as hostile_apply, _write as hostile_write, mutations

REPO = Path(__file__).resolve().parents[2]
FUSETRACE = [sys.executable, "-P", "-m", "inspector.cli"]
_ENTRY_REPLIES = {Opcode.LOOKUP, Opcode.MKNOD, Opcode.MKDIR, Opcode.SYMLINK, Opcode.LINK,
                  Opcode.CREATE, Opcode.TMPFILE}


def fusetrace(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSETRACE, *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sql") / "synthetic.fzt"
    synthetic_trace(path, 12_000, seed=5)
    return path


def _rows(table: Any) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_every_column_is_what_the_dissectors_decode(trace: Path) -> None:
    """Request columns against the quick decoder's fields (and the lifecycle pass's own
    view of file handles), reply columns against the decoded reply, paired as `show`
    pairs them."""
    rows = read_tables([str(trace)])["exchanges"].to_pylist()
    by_request = {r["record"]: r for r in rows if r["record"] is not None}
    assert len(by_request) == len(rows)  # the synthetic session answers no unknown unique
    seen = set()
    with TraceReader(trace) as reader:
        for entry in entries(reader):
            rec, msg = entry.record, entry.message
            if msg is None or msg.brief.direction == "notify":
                continue
            brief = msg.brief
            if rec.kind is Kind.REQUEST:
                row = by_request[rec.index]
                seen.add(rec.index)
                assert (row["opcode"], row["unique"], row["nodeid"], row["pid"]) == (
                    opcode_name(brief.opcode), brief.unique, brief.nodeid, brief.pid)
                assert row["request_bytes"] == brief.length
                for col in ("offset", "size", "flags"):
                    assert row[col] == brief.get(col), (col, rec.index)
                name = brief.extras.get("name")
                assert row["name"] == (name.decode() if name is not None else None)
                fhs = wire.request_fhs(brief.opcode, rec.raw or b"")
                if fhs:
                    assert row["fh"] == fhs[0]
                assert row["start_ns"] == rec.ts
                continue
            row = by_request[entry.request_index]
            assert row["reply_record"] == rec.index and row["end_ns"] == rec.ts
            assert row["latency_ns"] == entry.latency_ns
            assert row["error"] == -brief.error
            assert row["error_name"] == errno_name(brief.error)
            assert row["reply_bytes"] == brief.length
            op = brief.opcode
            flags = brief.get("open_flags") if not brief.error else None
            assert row["open_flags"] == flags
            assert row["backing_id"] == (brief.get("backing_id")
                                         if flags is not None and flags & FOPEN_PASSTHROUGH
                                         else None)
            assert row["new_nodeid"] == (brief.get("nodeid") if op in _ENTRY_REPLIES
                                         and not brief.error else None)
            if op in (Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE) and not brief.error:
                assert row["fh"] == brief.get("fh")
    assert seen == set(by_request)
    opened = [r for r in rows if r["backing_id"] is not None]
    assert opened and all(r["open_flags"] & FOPEN_PASSTHROUGH for r in opened)
    # no reply: FORGETs, and a request the session's last records leave unanswered
    unanswered = [r for r in rows if r["reply_record"] is None and r["opcode"] != "FORGET"]
    assert all(r["record"] >= 12_000 - 4 for r in unanswered)
    assert all(r["error"] is None and r["latency_ns"] is None for r in unanswered)


def test_the_chunk_size_changes_nothing(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests answered in a later chunk, INIT in the first: the same rows with chunks of
    97 records as with one chunk."""
    whole = read_tables([str(trace)])
    monkeypatch.setattr(build, "CHUNK", 97)
    small = read_tables([str(trace)])
    for table in TABLES:
        assert _rows(small[table.name]) == _rows(whole[table.name]), table.name
    assert whole["exchanges"].num_rows > 5000


def test_ioctls_events_and_notifications(trace: Path) -> None:
    tables = read_tables([str(trace)])
    with TraceReader(trace) as reader:
        records = list(reader)
    ioctls = [r for r in records if r.kind is Kind.IOCTL]
    got = tables["ioctls"].to_pylist()
    assert [r["record"] for r in got] == [r.index for r in ioctls]
    for row, rec in zip(got, ioctls):
        assert row["result"] == rec.meta["result"] and row["path"] == rec.meta["path"]
        if row["ioctl"] == "FUSE_DEV_IOC_BACKING_OPEN":
            assert row["backing_id"] == rec.meta["result"] and row["fd"] == rec.meta["fd"]
        else:
            assert row["ioctl"] == "FUSE_DEV_IOC_BACKING_CLOSE"
            assert row["backing_id"] == int.from_bytes(rec.meta["arg"][:4], "little")
    notes = [r for r in records if r.kind is Kind.REPLY and r.raw and not int.from_bytes(
        r.raw[8:16], "little")]
    got = tables["notifications"].to_pylist()
    assert [(r["record"], r["notify"]) for r in got] == [
        (r.index, "NOTIFY_INVAL_INODE") for r in notes]
    assert all(r["nodeid"] == int.from_bytes(n.raw[16:24], "little") for r, n in zip(got, notes))
    [event] = tables["events"].to_pylist()
    assert event["event"] == "session_end" and json.loads(event["detail"]) == {"records": 12_000}


def test_lifecycles_and_anomalies_are_the_lifecycle_pass(trace: Path) -> None:
    tables = read_tables([str(trace)])
    analysis = analyse(trace)
    expected = sorted((kind, lc.key, lc.generation, lc.verdict, len(lc.events))
                      for kind in ("backing", "fh", "node") for lc in analysis.lifecycles(kind))
    assert sorted((r["kind"], r["key"], r["generation"], r["verdict"], r["events"])
                  for r in tables["lifecycles"].to_pylist()) == expected
    assert [(r["code"], r["records"]) for r in tables["anomalies"].to_pylist()] == [
        (a.code, list(a.records)) for a in analysis.anomalies]
    [row] = tables["traces"].to_pylist()
    assert (row["trace"], row["records"], row["minor"], row["dialect"], row["cut"]) == (
        "synthetic", 12_000, 45, "mainline", None)
    assert row["argv"] == ["passthrough_hp", "/srv/data", "/mnt/fuse"]


def test_the_parquet_export_reads_back_as_the_same_tables(trace: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.fzt.zst"
    synthetic_trace(tmp_path / "other.fzt", 3_000, seed=9)
    res = fusetrace("compress", tmp_path / "other.fzt", "-o", other)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "dataset"
    res = fusetrace("export", "--parquet", out, trace, other)
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert json.loads((out / "schema.json").read_text()) == schema_document()
    in_memory = read_tables([str(trace), str(other)])
    con = duckdb.connect()
    for table in TABLES:
        files = sorted((out / table.name).glob("*/*.parquet"))
        assert [f.parent.name for f in files] == ["trace=other", "trace=synthetic"]
        for f in files:  # the declared types, the partition column in the directory name
            assert pq.read_schema(f).remove_metadata() == table.arrow_schema(with_trace=False)
        columns = ", ".join(f'"{c.name}"' for c in table.columns)
        back = con.sql(f"SELECT {columns} FROM read_parquet('{out}/{table.name}/*/*.parquet', "
                       f"hive_partitioning = true)").to_arrow_table()
        assert _rows(back) == _rows(in_memory[table.name]), table.name

    # a trace of the same name exported again replaces its partitions, the others stay
    synthetic_trace(tmp_path / "synthetic.fzt", 500, seed=1)
    res = fusetrace("export", "--parquet", out, tmp_path / "synthetic.fzt")
    assert res.returncode == 0, res.stderr
    res = fusetrace("sql", "--csv", "-e", "SELECT trace, records FROM traces ORDER BY 1", out)
    assert res.stdout == "trace,records\nother,3000\nsynthetic,500\n", res.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # a trace that cannot be read stops the export before it changes anything
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    synthetic_trace(tmp_path / "third.fzt", 100)
    res = fusetrace("export", "--parquet", out, tmp_path / "third.fzt", tmp_path / "missing.fzt")
    assert res.returncode == 2 and "missing.fzt: no such file" in res.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_sql_reads_traces_and_exports_together(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    assert fusetrace("export", "--parquet", out, trace).returncode == 0
    copy = tmp_path / "again.fzt"
    copy.write_bytes(trace.read_bytes())
    res = fusetrace("sql", "--json", "-e",
                    "SELECT trace, count(*) AS n FROM exchanges GROUP BY 1 ORDER BY 1", copy, out)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["trace"] for r in rows] == ["again", "synthetic"]
    assert rows[0]["n"] == rows[1]["n"] > 5000
    res = fusetrace("sql", "-e", "SELECT 1", tmp_path)
    assert res.returncode == 2 and "schema.json" in res.stderr
    shutil.rmtree(out / "ioctls")  # damaged: a table's directory is gone
    res = fusetrace("sql", "-e", "SELECT 1", out)
    assert res.returncode == 2
    assert res.stderr.startswith("fusetrace: error: cannot open the ioctls table: ")
    assert len(res.stderr.splitlines()) == 1


def test_names_and_types_come_from_the_schema(trace: Path) -> None:
    res = fusetrace("sql", "--help")
    assert help_text() in res.stdout.replace("\r", "")
    for table in TABLES:
        for col in table.columns:
            assert f"    {col.name:<14}{col.type:<12}" in res.stdout, col.name
    query = " UNION ALL ".join(
        f"SELECT '{t.name}' AS t, column_name AS c, data_type AS type "
        f"FROM information_schema.columns WHERE table_name = '{t.name}'" for t in TABLES)
    res = fusetrace("sql", "--csv", "-e", query, trace)
    assert res.returncode == 0, res.stderr
    found = {tuple(line.split(",", 2)) for line in res.stdout.splitlines()[1:]}
    declared = {(t.name, c.name, c.type.replace("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"))
                for t in TABLES for c in t.columns}
    assert found == declared
    assert all(t.columns[0].name == PARTITION for t in TABLES)


@pytest.mark.parametrize("cut", [0.23, 0.5, 0.97])
def test_a_cut_trace_gives_its_whole_records_and_says_so(trace: Path, tmp_path: Path,
                                                         cut: float) -> None:
    data = trace.read_bytes()
    path = tmp_path / "cut.fzt"
    path.write_bytes(data[:int(len(data) * cut)])
    with TraceReader(path) as reader:
        records = list(reader)
        tail = reader.tail
    assert tail is not None
    requests = sum(r.kind is Kind.REQUEST for r in records)
    res = fusetrace("sql", "--csv", "-e",
                    "SELECT (SELECT count(record) FROM exchanges), records, cut FROM traces", path)
    assert res.returncode == DAMAGED  # the damaged-trace rule: the prefix, one line, exit 3
    assert res.stdout.splitlines()[1] == f"{requests},{len(records)},{tail}"
    assert res.stderr.strip() == warning(str(path), tail)
    out = tmp_path / "dataset"
    res = fusetrace("export", "--parquet", out, path)
    assert res.returncode == DAMAGED and res.stderr.strip() == warning(str(path), tail)
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/exchanges/*/*.parquet'").fetchall() == [
        (requests,)]


@pytest.mark.parametrize("query, error", [
    ("SELEC opcode FROM exchanges", "Parser Error"),
    ("SELECT * FROM exchange", "Catalog Error"),
    ("SELECT latency FROM exchanges", "Binder Error"),
    ("SELECT 1; SELECT nope FROM ioctls", "Binder Error"),
])
def test_bad_sql_is_one_line_and_exit_2(trace: Path, query: str, error: str) -> None:
    res = fusetrace("sql", "-e", query, trace)
    assert res.returncode == 2
    [line] = res.stderr.splitlines()
    assert line.startswith(f"fusetrace: sql: {error}: ")
    assert "LINE 1" not in line


def test_sql_from_standard_input_and_output_formats(trace: Path) -> None:
    script = "SELECT opcode, count(*) AS n FROM exchanges GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 2;"
    piped = subprocess.run([*FUSETRACE, "sql", str(trace)], input=script, capture_output=True,
                           text=True, timeout=60, cwd=REPO)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:3]] == ["opcode", "n"]
    assert lines[-1] == "(2 rows)"
    as_json = [json.loads(x) for x in fusetrace("sql", "--json", "-e", script, trace).stdout.splitlines()]
    as_csv = fusetrace("sql", "--csv", "-e", script, trace).stdout.splitlines()
    odd = fusetrace("sql", "--json", "-e", "SELECT 'nan'::DOUBLE AS x, [1, 'inf'::DOUBLE] AS y",
                    trace)
    assert json.loads(odd.stdout) == {"x": None, "y": [1.0, None]}  # JSON has no NaN
    assert as_csv[0] == "opcode,n"
    assert [f"{r['opcode']},{r['n']}" for r in as_json] == as_csv[1:]
    assert [x.split("|")[1].strip() for x in lines[2:4]] == [r["opcode"] for r in as_json]


def test_trace_names() -> None:
    assert trace_names(["a/x.fzt", "b/x.fzt.zst", "y", "we ird:.fzt", "/t/.fzt"]) == [
        "x", "x-2", "y", "we_ird_", "fzt"]
    assert os.sep not in "".join(trace_names(["../../etc/passwd"]))


def test_the_shell_on_a_terminal(trace: Path) -> None:
    """Without -e on a terminal: dot commands, a statement over two lines, an error that
    does not end the shell, .quit to leave."""
    import pty
    import select

    main, side = pty.openpty()
    proc = subprocess.Popen([*FUSETRACE, "sql", str(trace)], stdin=side, stdout=side,
                            stderr=side, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    os.close(side)
    typed = ".tables\nSELECT count(*) AS n\nFROM ioctls;\nSELEC 1;\n.schema ioctls\n.quit\n"
    os.write(main, typed.encode())
    seen = b""
    try:
        while select.select([main], [], [], 30)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the shell ended: its side of the terminal is closed
                break
            if not chunk:
                break
            seen += chunk
        proc.wait(timeout=30)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "exchanges  notifications  ioctls" in text.replace("traces  ", "")
    count = read_tables([str(trace)])["ioctls"].num_rows
    assert f"│ {count} │" in text  # the rich table of the two-line statement
    assert "fusetrace: sql: Parser Error" in text
    schema = text[text.index("ioctls: one row per"):]
    assert "backing_id" in schema and "exchanges" not in schema  # .schema ioctls alone


@settings(max_examples=int(os.environ.get("FUSETRACE_HOSTILE_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(edits=mutations())
def test_mutated_traces_give_tables_or_one_line(edits: list[tuple[Any, ...]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The hostile-trace mutations (garbage records, wrong meta types, cut messages, odd
    headers): every table builds or the command says why in one line, exit 2 (or the damaged-trace warning and exit 3)."""
    monkeypatch.setattr(sources, "workers", lambda: None)  # no fork inside pytest
    header, records = hostile_apply(edits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t.fzt")
        hostile_write(path, header, records)
        query = "; ".join(f"SELECT * FROM {t.name}" for t in TABLES)
        for argv in (["sql", "--csv", "-e", query, str(path)],
                     ["export", "--parquet", str(Path(tmp, "out")), str(path)]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main(argv)
            assert code in (0, 2, DAMAGED), (argv, err.getvalue())
            if code == 2:
                assert err.getvalue().splitlines()[-1].startswith("fusetrace: error: ")


@pytest.mark.parametrize("chunk", [3, build.CHUNK])
def test_columns_follow_what_init_negotiated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             chunk: int) -> None:
    """Before INIT the mainline layout; after an INIT reply choosing Android passthrough,
    open replies carry `passthrough_fh` and BACKING_OPEN's number is PASSTHROUGH_OPEN_V0;
    a mainline backing id without FOPEN_PASSTHROUGH is no backing id."""
    monkeypatch.setattr(build, "CHUNK", chunk)
    s = Session(tmp_path / "t.fzt")
    s.backing_open(3)
    s.open(2, 0x10, bid=3)
    s.open(2, 0x11, flags=0, bid=4)
    s.init(flags=FUSE_INIT_EXT | FUSE_PASSTHROUGH_ANDROID_EXT,
           offered=OFFERED | FUSE_PASSTHROUGH_ANDROID_EXT)
    s.backing_open(5)
    s.open(3, 0x12, flags=0, bid=5, android=True)
    s.end()
    tables = read_tables([str(s.writer.path)])
    opens = [(r["fh"], r["backing_id"]) for r in tables["exchanges"].to_pylist()
             if r["opcode"] == "OPEN"]
    assert sorted(opens) == [(0x10, 3), (0x11, None), (0x12, 5)]
    assert [(r["ioctl"], r["backing_id"]) for r in tables["ioctls"].to_pylist()] == [
        ("FUSE_DEV_IOC_BACKING_OPEN", 3), ("FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0", 5)]
    [trace_row] = tables["traces"].to_pylist()
    assert trace_row["dialect"] == "android"


def test_u64_ids_keep_their_bits_in_signed_columns(tmp_path: Path) -> None:
    """A handle of all ones (some servers' "none") reads -1 in BIGINT columns, the same in
    exchanges and lifecycles, so the two still join."""
    s = Session(tmp_path / "t.fzt")
    s.init()
    s.open(2, (1 << 64) - 1, flags=0)
    s.release(2, (1 << 64) - 1)
    s.end()
    tables = read_tables([str(s.writer.path)])
    assert sorted({r["fh"] for r in tables["exchanges"].to_pylist()} - {None}) == [-1]
    assert [(r["kind"], r["key"]) for r in tables["lifecycles"].to_pylist()
            if r["kind"] == "fh"] == [("fh", -1)]


def test_the_build_streams(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches come as the records are read, a chunk at a time, none larger than a chunk:
    what keeps memory flat whatever the trace's size."""
    read: list[int] = []

    class Counting(TraceReader):
        def arrays(self, progress: Any = None) -> Any:
            for obj in super().arrays(progress):
                read.append(1)
                yield obj

    monkeypatch.setattr(build, "TraceReader", Counting)
    monkeypatch.setattr(build, "CHUNK", 500)
    batches = build.TraceTables(str(trace), "t").batches()
    next(batches)
    assert len(read) == 500
    sizes = [batch.num_rows for _, batch in batches]
    assert len(read) == 12_000 and len(sizes) > 24 and max(sizes) <= 500
