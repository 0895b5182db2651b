"""`fusetrace serve` on real mounts: record a session, mount its trace, run the same
workload against it and see the same output; what the trace cannot answer is reported
with its closest recorded request; Ctrl-C and SIGTERM unmount cleanly, also when busy;
bad traces are one line and exit 2, with nothing mounted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import msgpack
import pytest

from inspector.serve.responder import PASSTHROUGH_NOTE
from inspector.testing import (
    cleanup_mount,
    is_mounted,
    mounted_server,
    recorded_server,
    wait_for_mount,
)
from traces.testing import synthetic_trace

from record_support import FUSETRACE, MEMFS, PASSTHROUGHFS, REPO, fusetrace, mount_test
from test_record import needs_trap

if TYPE_CHECKING:
    from conftest import FsDirs

STAT = "stat -c '%n %s %f %h %u %g %i %X %Y %Z'"
#: Reads a tree: listing, contents, attributes, a link, and a name that does not exist.
READ_WORKLOAD = (f"ls -lR . ; cat a.txt d/b.txt | sha256sum ; {STAT} l d a.txt d/b.txt ; "
                 "readlink l ; stat nothere")
#: The same without reading file contents (passthrough keeps those from the trace).
META_WORKLOAD = f"ls -lR . ; {STAT} l d a.txt d/b.txt ; readlink l ; stat nothere"
#: Changes a tree, then reads it back.
WRITE_WORKLOAD = ("mkdir d && printf 'hello\\n' > d/f && seq 1 30000 > big && mv d/f d/g && "
                  "echo more >> d/g && ln -s d/g l && chmod 600 big && ls -lR . && "
                  f"cat d/g l big | sha256sum && {STAT} l d d/g big ; rm l ; ls")


def run(workload: str, cwd: Path) -> str:
    """The workload's stdout and stderr together, as a user would see them."""
    res = subprocess.run(["sh", "-c", workload], cwd=cwd, capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def make_tree(src: Path) -> None:
    (src / "d").mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "d" / "b.txt").write_bytes(os.urandom(300_000))  # several READs
    os.symlink("a.txt", src / "l")


def record(argv: list[str], mnt: Path, trace: Path, *workloads: str) -> list[str]:
    """Run each workload on the mount of `argv` under `fusetrace record -s 0`."""
    with recorded_server(argv, mnt, trace, "-s", "0", cwd=REPO) as rec:
        seen = [run(workload, mnt) for workload in workloads]
        assert rec.unmount_and_wait() == 0, rec.output()
    return seen


def serve_command(trace: Path, mnt: Path, *options: str) -> list[str]:
    return [*FUSETRACE, "serve", *options, str(trace), str(mnt)]


class Served:
    """What one serve session left: its exit status, its stderr and its JSON report."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.stderr = ""
        self.report: dict[str, Any] = {}


@contextlib.contextmanager
def serving(trace: Path, mnt: Path, report: Path, *options: str) -> Iterator[Served]:
    """`fusetrace serve --report` around the block; `Served` is filled in when it ends."""
    served = Served()
    with mounted_server(serve_command(trace, mnt, "--report", str(report), *options), mnt,
                        cwd=REPO) as server:
        yield served
    served.status = server.proc.returncode
    served.stderr = server.stderr()
    served.report = json.loads(report.read_text())


def only_miss(served: Served) -> dict[str, Any]:
    [miss] = served.report["misses"]
    return miss


@mount_test
def test_passthroughfs_trace_serves_the_same_tree(isolated: Path, fs_dirs: FsDirs) -> None:
    src, mnt = fs_dirs
    make_tree(src)
    trace = isolated / "t.fzt"
    [recorded] = record([*PASSTHROUGHFS, str(src), str(mnt), "--no-passthrough"], mnt, trace,
                        READ_WORKLOAD)
    assert "b.txt" in recorded and "No such file or directory" in recorded
    with serving(trace, mnt, isolated / "r.json") as served:
        assert run(READ_WORKLOAD, mnt) == recorded
        missing = run("stat missing", mnt)
        assert "Input/output error" in missing, missing
    assert served.status == 1, served.stderr
    miss = only_miss(served)
    assert miss["request"] == "LOOKUP nodeid=1 name='missing'"
    assert miss["closest"].endswith("LOOKUP nodeid=1 name='nothere'")
    assert miss["differs"] == ["name: 'missing' here, 'nothere' recorded"]
    assert served.report["answered"] == served.report["requests"] - 1
    assert "requests the trace has no reply for:" in served.stderr
    assert "closest recorded: #" in served.stderr


@mount_test
def test_pyfuse3_memfs_changes_replay_in_order(isolated: Path, fs_dirs: FsDirs) -> None:
    """Creating, writing, renaming, linking, removing: every request matches its recorded
    twin, each reply is used once, and the output is the recorded one."""
    pytest.importorskip("pyfuse3")
    mnt = fs_dirs.mountpoint
    trace = isolated / "t.fzt"
    [recorded] = record([*MEMFS, str(mnt)], mnt, trace, WRITE_WORKLOAD)
    assert "big" in recorded and "d/g" in recorded
    with serving(trace, mnt, isolated / "r.json", "-q") as served:
        assert run(WRITE_WORKLOAD, mnt) == recorded
    assert served.status == 0, served.stderr
    assert served.report["ok"] and served.report["unmatched"] == 0
    assert served.stderr == ""  # -q and nothing to report


@mount_test
def test_passthrough_reads_are_reported_as_unanswerable(isolated: Path, fs_dirs: FsDirs) -> None:
    needs_trap()
    src, mnt = fs_dirs
    make_tree(src)
    trace = isolated / "t.fzt"
    recorded, cat = record([*PASSTHROUGHFS, str(src), str(mnt)], mnt, trace, META_WORKLOAD,
                           "cat a.txt")
    assert cat == "hello\n"
    with serving(trace, mnt, isolated / "r.json") as served:
        assert run(META_WORKLOAD, mnt) == recorded
        assert "Input/output error" in run("cat a.txt", mnt)
    assert served.status == 1
    misses = served.report["misses"]
    assert misses and all(m["request"].startswith("READ ") for m in misses)
    assert all(m["note"] == PASSTHROUGH_NOTE for m in misses)
    assert PASSTHROUGH_NOTE in served.stderr


def _serve_process(trace: Path, mnt: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(serve_command(trace, mnt), cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_mount(mnt, proc)  # type: ignore[arg-type]
    return proc


@pytest.fixture
def small_trace(isolated: Path, fs_dirs: FsDirs) -> Path:
    src, mnt = fs_dirs
    make_tree(src)
    trace = isolated / "t.fzt"
    record([*PASSTHROUGHFS, str(src), str(mnt), "--no-passthrough"], mnt, trace, "ls -l")
    return trace


@mount_test
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_unmounts_even_a_busy_mount(small_trace: Path, fs_dirs: FsDirs,
                                             sig: signal.Signals) -> None:
    mnt = fs_dirs.mountpoint
    proc = _serve_process(small_trace, mnt)
    busy = None
    try:
        assert "a.txt" in run("ls -l", mnt)
        busy = subprocess.Popen(["sleep", "60"], cwd=mnt)  # keeps the mount busy
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert not is_mounted(mnt)
        assert f"(detached after {sig.name})" in err  # busy: unmounted lazily
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        cleanup_mount(mnt, proc)  # type: ignore[arg-type]


@mount_test
def test_a_used_mountpoint_is_refused(small_trace: Path, fs_dirs: FsDirs) -> None:
    mnt = fs_dirs.mountpoint
    proc = _serve_process(small_trace, mnt)
    try:
        res = fusetrace("serve", str(small_trace), str(mnt))
        assert res.returncode == 2
        assert res.stderr.startswith("fusetrace: error: mountpoint ") and "in use" in res.stderr
    finally:
        cleanup_mount(mnt, proc)  # type: ignore[arg-type]


def _bad_traces(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.fzt"
    synthetic_trace(good, 200)
    cut = tmp / "cut.fzt"
    data = good.read_bytes()
    cut.write_bytes(data[:len(data) - 7])
    newer = tmp / "newer.fzt"
    newer.write_bytes(msgpack.packb({"magic": "fusetrace", "format": 99}))
    garbage = tmp / "garbage.fzt"
    garbage.write_bytes(os.urandom(3000))
    no_init = tmp / "no-init.fzt"
    no_init.write_bytes(msgpack.packb({"magic": "fusetrace", "format": 1})
                        + msgpack.packb([4, 1, {"event": "session_end"}]))
    return {
        "cut": (cut, "trace cut at byte"),
        "newer": (newer, "upgrade fusetrace"),
        "garbage": (garbage, "not a fusetrace trace"),
        "no-init": (no_init, "no answered INIT"),
        "missing": (tmp / "nope.fzt", "no such file"),
    }


@pytest.mark.parametrize("kind", ["cut", "newer", "garbage", "no-init", "missing"])
def test_bad_traces_are_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    path, words = _bad_traces(tmp_path)[kind]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = fusetrace("serve", str(path), str(mnt))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("fusetrace: error: ")
    assert words in res.stderr and "Traceback" not in res.stderr
    assert not is_mounted(mnt) and res.stdout == ""


def test_a_bad_miss_errno_is_refused(tmp_path: Path) -> None:
    res = fusetrace("serve", "--miss-errno", "EWHAT", "t.fzt", str(tmp_path))
    assert res.returncode == 2 and "not an errno name or number: 'EWHAT'" in res.stderr
