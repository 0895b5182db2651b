"""`fusetrace reduce`: a long session that crashes the server at its end shrinks to the
few messages that still crash it the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors.constants import Opcode
from inspector.reduce import reduce_trace
from inspector.reduce.units import cut
from inspector.target import Verdict, play
from inspector.passthroughfs.misbehave import LONG_NAME
from inspector.testing import fuse_available, recorded_server
from record_support import PASSTHROUGHFS
from traces import Kind, TraceReader

LONG = "n" * (LONG_NAME + 1)  # over passthroughfs's crash-long-name limit, under NAME_MAX


#: Known defect (stop 20): which exchange a crash is first blamed on depends on timing, and
#: reduce's path (and so its result) with it; these pass in most runs, not all.
TIMING_FLAKY = pytest.mark.xfail(strict=False, reason="reduce's result depends on which "
                                 "exchange a crash is first blamed on (timing); to be made "
                                 "deterministic")


def _server(src: Path, mnt: Path) -> list[str]:
    return [*PASSTHROUGHFS, "--misbehave", "crash-long-name", "-o", "attr_timeout=0",
            str(src), str(mnt)]


@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    base = tmp_path_factory.mktemp("reduce")
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    trace = base / "long.fzt"
    with recorded_server(_server(src, mnt), mnt, trace, "-s", "0") as rec:
        for i in range(40):
            (mnt / f"f{i}").write_bytes(b"x" * i)
            os.stat(mnt / f"f{i}")
        os.listdir(mnt)
        with pytest.raises(OSError):
            os.stat(mnt / LONG)
        rec.proc.wait(20)  # the server died: fusetrace ends the session itself
    return trace, _server(src, mnt)


def _requests(path: Path) -> list[int]:
    return [int.from_bytes(r.raw[4:8], "little") for r in TraceReader(path)
            if r.kind is Kind.REQUEST]


@TIMING_FLAKY
def test_a_crash_at_the_end_reduces_to_a_few_messages(crashing: tuple[Path, list[str]],
                                                      tmp_path: Path) -> None:
    trace, server = crashing
    assert len(_requests(trace)) > 150
    small = tmp_path / "small.fzt"
    result = reduce_trace(trace, small, server, jobs=2)
    assert result.signature == ("killed", "LOOKUP", "SIGABRT")
    assert result.messages <= 12 < result.messages_before
    ops = _requests(small)
    assert ops[0] == Opcode.INIT and ops[-1] == Opcode.LOOKUP
    again = play(small, server, timeout=5)
    assert again is not None and again.verdict is Verdict.KILLED
    assert again.status == signal.SIGABRT and again.opcode == Opcode.LOOKUP


@TIMING_FLAKY
def test_the_result_does_not_depend_on_jobs(crashing: tuple[Path, list[str]],
                                            tmp_path: Path) -> None:
    trace, server = crashing
    one, two = tmp_path / "1.fzt", tmp_path / "2.fzt"
    reduce_trace(trace, one, server, jobs=1)
    reduce_trace(trace, two, server, jobs=3)
    assert _requests(one) == _requests(two)


def test_an_open_keeps_what_its_handle_uses_need(crashing: tuple[Path, list[str]]) -> None:
    c = cut(crashing[0])
    reads = [i for i, u in enumerate(c.units) if u.opcode == Opcode.FLUSH]
    assert reads
    for i in reads:
        needed = {c.units[j].opcode for j in c.closure([i])}
        assert Opcode.CREATE in needed or Opcode.OPEN in needed


@TIMING_FLAKY
@pytest.mark.timeout(320)  # the reduce it runs may take its 300 s on a loaded machine
def test_cli_writes_the_trace_and_counts_replays(crashing: tuple[Path, list[str]],
                                                 tmp_path: Path) -> None:
    trace, server = crashing
    small = tmp_path / "cli.fzt"
    done = subprocess.run([sys.executable, "-m", "inspector.cli", "reduce", str(trace), "-o",
                           str(small), "--", *server], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "replays" in done.stdout and "killed in LOOKUP (SIGABRT)" in done.stdout
    assert small.exists()


def test_a_bad_trace_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fzt"
    bad.write_bytes(b"not a trace")
    done = subprocess.run([sys.executable, "-m", "inspector.cli", "reduce", str(bad), "-o",
                           str(tmp_path / "x.fzt"), "--", *PASSTHROUGHFS, str(tmp_path),
                           str(tmp_path / "mnt")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.timeout(320)  # the reduce it runs may take its 300 s on a loaded machine
def test_keep_shrinks_to_a_difference_the_filter_selects(crashing: tuple[Path, list[str]],
                                                        tmp_path: Path) -> None:
    """Replayed on the source the recording left, the LOOKUPs that failed (the files did
    not exist yet) now succeed: --keep picks those differences among all."""
    trace, server = crashing
    correct = [a for a in server if a not in ("--misbehave", "crash-long-name")]
    small = tmp_path / "keep.fzt"
    done = subprocess.run([sys.executable, "-m", "inspector.cli", "reduce", str(trace), "-o",
                           str(small), "--keep", "op=LOOKUP and err", "--jobs", "2", "--",
                           *correct], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "reply in LOOKUP" in done.stdout and "error" in done.stdout, done.stdout
    assert _requests(small) == [Opcode.INIT, Opcode.LOOKUP]


@pytest.mark.parametrize("server", [
    [sys.executable, "-c", "import sys; sys.exit(3)"],
    ["/nonexistent/server"],
    [*PASSTHROUGHFS, "--no-such-option"],
])
def test_a_server_that_cannot_start_is_an_error_not_a_reduction(
        crashing: tuple[Path, list[str]], tmp_path: Path, server: list[str]) -> None:
    trace, _ = crashing
    done = subprocess.run([sys.executable, "-m", "inspector.cli", "reduce", str(trace), "-o",
                           str(tmp_path / "x.fzt"), "--", *server, str(tmp_path),
                           str(tmp_path / "mnt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("fusetrace: error:") and done.stdout == ""
    assert not (tmp_path / "x.fzt").exists()


def test_reduce_has_help_for_every_option() -> None:
    from inspector.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices["reduce"]
    for action in parser._actions:
        if action.dest not in ("help", "server"):
            assert action.help, action.dest
