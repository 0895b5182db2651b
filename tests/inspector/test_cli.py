"""`fusetrace show` / `export` as a user runs them: real processes, real pipes."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.cli import main
from inspector.damaged import DAMAGED, warning
from traces import TraceReader
from traces.testing import synthetic_trace

FUSETRACE = [sys.executable, "-m", "inspector.cli"]


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSETRACE, *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "t.fzt"
    synthetic_trace(path, 400, seed=1)
    return path


def test_show_prints_one_line_per_record(trace: Path) -> None:
    res = run("show", str(trace))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 400
    assert lines[0].split()[0] == "0"
    assert any(" -> INIT " in line for line in lines)
    assert any(" <- INIT " in line for line in lines)
    assert any("(+" in line for line in lines), "replies carry their latency"
    assert not any("[raw:" in line for line in lines), "a synthetic trace decodes fully"


def test_show_verbose_and_hex(trace: Path) -> None:
    res = run("show", "-v", "-x", "-c", "5", str(trace))
    assert res.returncode == 0, res.stderr
    assert "###[ fuse_in_header ]###" in res.stdout
    assert "0000  " in res.stdout  # scapy hexdump rows
    headlines = [line for line in res.stdout.splitlines() if re.match(r"^ *\d+ +\d+\.\d{6} ", line)]
    assert len(headlines) == 5


def test_export_jsonl_round_trips_raw_bytes(trace: Path) -> None:
    res = run("export", "--jsonl", str(trace))
    assert res.returncode == 0, res.stderr
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    assert "header" in objs[0]
    records = objs[1:]
    assert len(records) == 400
    req = next(o for o in records if o["kind"] == "request" and o["opcode"] == 26)
    assert req["fields"]["major"] == 7
    assert bytes.fromhex(req["raw"])[4:8] == (26).to_bytes(4, "little")


@pytest.mark.parametrize("make", ["missing", "directory", "garbage", "empty"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make: str) -> None:
    path = tmp_path / "x.fzt"
    if make == "directory":
        path.mkdir()
    elif make == "garbage":
        path.write_bytes(b"this is not a trace\n" * 10)
    elif make == "empty":
        path.write_bytes(b"")
    res = run("show", str(path))
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("fusetrace: error:")


#: commands that work from a damaged trace's prefix: argv (TRACE, DIR filled in)
PREFIX_COMMANDS = [
    ["show", "TRACE"], ["show", "-v", "-x", "TRACE"], ["show", "-r=-5:", "TRACE"],
    ["show", "--filter", "err or backing", "TRACE"],
    ["export", "--jsonl", "-o", "DIR/out.jsonl", "TRACE"], ["export", "--jsonl", "TRACE"],
    ["export", "--perfetto", "-o", "DIR/out.json", "TRACE"],
    ["export", "--pcapng", "-o", "DIR/out.pcapng", "TRACE"],
    ["check", "TRACE"], ["check", "--json", "TRACE"],
    ["follow", "--backing-id", "1", "TRACE"], ["follow", "--nodeid", "424242", "TRACE"],
    ["stats", "TRACE"], ["stats", "--json", "TRACE"],
    ["compress", "-o", "DIR/out.fzt.zst", "TRACE"],
    ["sql", "--csv", "-e", "SELECT count(*) FROM exchanges", "TRACE"],
    ["export", "--parquet", "DIR/dataset", "TRACE"],
]
#: commands that need the whole session
WHOLE_SESSION_COMMANDS = [
    ["replay", "TRACE", "--", "true", "DIR"],
    ["serve", "TRACE", "DIR"],
    ["reduce", "TRACE", "-o", "DIR/small.fzt", "--", "true", "DIR"],
    ["fuzz", "TRACE", "--seconds", "1", "-o", "DIR/findings", "--", "true", "DIR"],
]


def _damaged(trace: Path, where: Path, how: str) -> Path:
    """`trace` cut in the middle of its last record, or with a garbled record half-way."""
    data = trace.read_bytes()
    out = where / f"{how}.fzt"
    if how == "cut":
        out.write_bytes(data[:len(data) - 7])
    else:
        with TraceReader(trace) as reader:
            middle = [rec.offset for rec in reader][200]
        out.write_bytes(data[:middle] + b"\xc1" + data[middle + 1:])  # 0xc1: no msgpack object
    return out


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _fill(argv: list[str], trace: Path, where: Path) -> list[str]:
    return [a.replace("TRACE", str(trace)).replace("DIR", str(where)) for a in argv]


@pytest.mark.parametrize("how", ["cut", "garbled"])
def test_a_damaged_trace_gets_one_rule_from_every_command(tmp_path: Path, trace: Path,
                                                          how: str) -> None:
    """Commands that read a prefix print it, then the same one-line warning, and exit 3
    whatever their verdict; commands needing the whole session refuse with exit 2."""
    bad = _damaged(trace, tmp_path, how)
    with TraceReader(bad) as reader:
        good = sum(1 for _ in reader)
        tail = reader.tail
    assert tail is not None and 0 < good < 400
    expected = warning(str(bad), tail)
    for argv in PREFIX_COMMANDS:
        code, out, err = _in_process(_fill(argv, bad, tmp_path))
        assert code == DAMAGED == 3, (argv, code, err)
        assert err.splitlines()[-1] == expected, argv
        assert "Traceback" not in err
    assert (tmp_path / "out.pcapng").exists() and (tmp_path / "out.json").exists()
    jsonl = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(jsonl) == 1 + good + 1 and json.loads(jsonl[-1]) == {"tail": tail}
    perfetto = json.loads((tmp_path / "out.json").read_text())
    assert perfetto["otherData"]["damaged"] == tail
    shown = run("show", str(bad))  # and as a user sees it: a real process, its own streams
    assert shown.returncode == 3 and len(shown.stdout.splitlines()) == good
    assert shown.stderr == expected + "\n"
    for argv in WHOLE_SESSION_COMMANDS:
        code, out, err = _in_process(_fill(argv, bad, tmp_path))
        assert code == 2, (argv, code, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("fusetrace: "), (argv, err)
        assert "trace cut at byte" in err, argv
    assert not (tmp_path / "small.fzt").exists()


def test_a_whole_trace_keeps_its_statuses(tmp_path: Path, trace: Path) -> None:
    """No warning and no 3 without damage: the rule changes nothing for a whole trace."""
    for argv in PREFIX_COMMANDS:
        code, _, err = _in_process(_fill(argv, trace, tmp_path))
        want = 1 if argv[:2] == ["follow", "--nodeid"] else 0
        assert (code, "warning" in err) == (want, False), (argv, code, err)


def test_compressed_traces_follow_the_rule(tmp_path: Path) -> None:
    """`compress` says what it wrote; a compressed trace cut short reads to its last whole
    frame and record, and `decompress` and `show` on it warn alike."""
    plain = tmp_path / "t.fzt"
    synthetic_trace(plain, 40_000, seed=4)  # several 1 MiB frames once compressed
    packed = tmp_path / "t.fzt.zst"
    code, _, err = _in_process(["compress", "-o", str(packed), str(plain)])
    assert code == 0
    assert re.fullmatch(rf"fusetrace: wrote {packed}: 40,000 records, [\d.]+ MB from "
                        rf"[\d.]+ MB \(0\.\d\d of the size\)\n", err), err
    data = packed.read_bytes()
    cut = tmp_path / "cut.fzt.zst"
    cut.write_bytes(data[:len(data) * 2 // 3])
    code, _, err = _in_process(["decompress", "-o", str(tmp_path / "back.fzt"), str(cut)])
    assert code == 3 and err.splitlines()[-1].startswith(f"fusetrace: warning: {cut} is damaged: ")
    assert "wrote" in err.splitlines()[0]
    code, _, err = _in_process(["show", str(cut)])
    assert code == 3 and err.startswith(f"fusetrace: warning: {cut} is damaged: ")


def test_closed_pipe_ends_quietly(trace: Path) -> None:
    show = subprocess.Popen([*FUSETRACE, "show", "-v", str(trace)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert show.stdout is not None
    show.stdout.readline()
    show.stdout.close()
    _, err = show.communicate(timeout=60)
    assert show.returncode == 0
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_ctrl_c_ends_quietly(tmp_path: Path) -> None:
    big = tmp_path / "big.fzt"
    synthetic_trace(big, 200_000, seed=2)
    show = subprocess.Popen([*FUSETRACE, "show", "-v", str(big)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert show.stdout is not None
    show.stdout.readline()
    show.send_signal(2)
    out, err = show.communicate(timeout=60)
    assert show.returncode == 130
    assert b"Traceback" not in err


def _no_latency(line: str) -> str:
    return re.sub(r" \(\+[\d.]+(us|ms)\)$", "", line)


@pytest.mark.parametrize("spec, rows", [("100:110", range(100, 110)), ("=-5:", range(395, 400)),
                                        ("0:3", range(0, 3))])
def test_records_range_matches_the_full_listing(trace: Path, spec: str, rows: range) -> None:
    """A slice decodes exactly as in the full listing (replies whose request lies before
    the slice get their opcode from the index; only their latency is unknown)."""
    full = run("show", str(trace)).stdout.splitlines()
    res = run("show", f"-r{spec}", str(trace))
    assert res.returncode == 0, res.stderr
    assert [_no_latency(x) for x in res.stdout.splitlines()] == [_no_latency(full[i]) for i in rows]
    assert Path(f"{trace}.idx").exists(), "the index is cached beside the trace"


def test_records_range_rejects_nonsense(trace: Path) -> None:
    res = run("show", "-r", "abc", str(trace))
    assert res.returncode == 2 and "START:STOP" in res.stderr


@pytest.mark.timeout(120)
def test_browse_of_a_damaged_trace_warns_after_the_tui(tmp_path: Path, trace: Path) -> None:
    """The TUI opens a damaged trace up to the damage; once quit, the same one-line
    warning and exit 3 as every other command."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    bad = _damaged(trace, tmp_path, "cut")
    with TraceReader(bad) as reader:
        for _ in reader:
            pass
        expected = warning(str(bad), reader.tail or "")
    sock = f"fusetrace-cli-{tmp_path.name}"
    status = tmp_path / "status"
    command = (f"env -u COLUMNS -u LINES XDG_CACHE_HOME={tmp_path / 'cache'} {sys.executable} "
               f"-m inspector.cli browse {bad}; echo $? > {status}; sleep 60")  # it draws on stderr

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout

    tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "40", command)
    try:
        deadline = time.monotonic() + 60
        while "records" not in tmux("capture-pane", "-p", "-t", "t"):
            assert time.monotonic() < deadline, "the TUI never showed the trace"
            time.sleep(0.2)
        tmux("send-keys", "-t", "t", "q")
        while not status.exists() or not status.read_text().strip():
            assert time.monotonic() < deadline, "the TUI did not quit"
            time.sleep(0.2)
        after = tmux("capture-pane", "-p", "-J", "-t", "t")  # -J: wrapped lines joined
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, timeout=10)
    assert status.read_text().strip() == "3"
    assert expected in after.splitlines()


def test_stats_columns_stay_apart_whatever_the_values(tmp_path: Path) -> None:
    """A latency of six digits before the point (here 123456.789 ms), a huge count of
    bytes: every column is still its own word."""
    from dissectors.constants import Opcode
    from dissectors.structs import FuseInHeader, FuseOutHeader
    from traces import TraceWriter

    slow = tmp_path / "slow.fzt"
    t0 = 1_000_000_000
    with TraceWriter(slow, {}) as writer:
        for n, wait_ns in enumerate([123_456_789_000, 5_000, 987_654_321]):
            unique = 2 * n + 2
            writer.request(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=unique, nodeid=1))
                           + bytes(16), ts=t0)
            writer.reply(bytes(FuseOutHeader(unique=unique, error=-2)), ts=t0 + wait_ns)
            t0 += wait_ns
    res = run("stats", str(slow))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    head = lines.index(next(x for x in lines if x.startswith("opcode")))
    assert lines[head].split() == ["opcode", "count", "p50", "ms", "p90", "ms", "p99", "ms",
                                   "max", "ms", "bytes", "in", "bytes", "out", "errors"]
    row = lines[head + 1].split()
    assert row[:6] == ["GETATTR", "3", "987.654", "123456.789", "123456.789", "123456.789"]
    assert row[8] == "ENOENT×3"
    labels = ["count", "p50 ms", "p90 ms", "p99 ms", "max ms", "bytes in", "bytes out"]
    label_ends = [lines[head].index(label) + len(label) for label in labels]
    value_ends = [m.end() for m in re.finditer(r"\S+", lines[head + 1])][1:8]
    assert label_ends == value_ends, "numbers are right-aligned under their titles"


def test_serve_names_a_mountpoint_that_is_missing_or_not_a_directory(tmp_path: Path,
                                                                     trace: Path) -> None:
    (tmp_path / "file").write_text("")
    for where, said in (("nowhere", " does not exist (mkdir it first)"),
                        ("file", ": not a directory")):
        code, out, err = _in_process(["serve", str(trace), str(tmp_path / where)])
        assert (code, out, err) == (2, "", f"fusetrace: error: mountpoint {tmp_path / where}{said}\n")


def test_record_usage_names_every_option() -> None:
    """`record`'s usage line is written by hand (argparse's would put SERVER's arguments
    before `--`): every option it takes must be in it."""
    from inspector.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    record = sub.choices["record"]
    usage = record.format_usage()
    for action in record._actions:
        if action.option_strings and action.dest != "help":
            assert any(opt in usage for opt in action.option_strings), action.option_strings


def test_the_rule_names_every_command_that_reads_a_trace() -> None:
    """`fusetrace --help` states the damaged-trace rule command by command: a new command
    that reads a trace must take a side there, and each side is tested above."""
    from inspector.cli import build_parser
    from inspector.damaged import RULE

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    readers = {name for name, p in sub.choices.items()
               if any(a.dest in ("trace", "source") for a in p._actions)}
    prefix_part = RULE.split(";", 1)[0]
    named = {w.strip(",") for w in re.findall(r"\b[a-z]+\b,?", RULE)} & set(sub.choices)
    assert readers == named, (readers, named)
    prefix = {w for w in named if re.search(rf"\b{w}\b", prefix_part)}
    tested_prefix = {argv[0] for argv in PREFIX_COMMANDS} | {"browse", "decompress"}
    assert prefix == tested_prefix
    assert named - prefix == {argv[0] for argv in WHOLE_SESSION_COMMANDS}
