"""`fusetrace show` / `export` as a user runs them: real processes, real pipes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_truncated_trace_shows_the_good_part_and_says_where(tmp_path: Path, trace: Path) -> None:
    data = trace.read_bytes()
    cut = tmp_path / "cut.fzt"
    cut.write_bytes(data[: len(data) - 7])
    res = run("show", str(cut))
    assert res.returncode == 0
    assert len(res.stdout.splitlines()) == 399
    assert "byte" in res.stderr


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
