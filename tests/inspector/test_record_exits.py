"""Each server process's exit is recorded exactly once, whatever order its threads end in.

A server whose main thread ends first (tests/servers/leader_exits.py: the bundled server
serving from other threads after `pthread_exit` of the main one, as a Go server's can) is
a zombie in /proc long before it exits: `record` must still tell its reading threads
ENODEV, wait for the process and record its exit. gocryptfs (Go, go-fuse: a daemon whose
threads end in any order, told ENODEV through ptrace) is recorded several times: every
trace names each process once, with its status, and never a thread. A thread that ends
while fusetrace traces it, or before it could be told, is neither a process nor a
refusal of ptrace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inspector import syscalls
from inspector.exchange import hangup
from inspector.record.processes import ServerProcesses
from inspector.testing import recorded_server
from record_support import REPO, check_trace, events_of, need, processes_mentioning

LEADER_EXITS = [sys.executable, str(REPO / "tests" / "servers" / "leader_exits.py")]


def _exits(trace: Path) -> tuple[dict[str, int], list[int], dict[str, Any]]:
    decoded = check_trace(trace)
    [end] = events_of(decoded, "session_end")
    exited = [e["pid"] for e in events_of(decoded, "server_exit")]
    return end["exits"], exited, end


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
@pytest.mark.parametrize("run", range(3))
def test_main_thread_ending_first(isolated: Path, run: int) -> None:
    src, mnt = isolated / "src", isolated / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("data\n")
    trace = isolated / "t.fzt"
    with recorded_server([*LEADER_EXITS, str(src), str(mnt)], mnt, trace, timeout=20) as rec:
        [pid] = rec.server_pids()
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert (mnt / "f").read_text() == "data\n"
        assert rec.unmount_and_wait(timeout=30) == 0, rec.output()
    assert "end of file" not in rec.output(), rec.output()
    exits, exited, end = _exits(trace)
    assert exits == {str(pid): 0} and exited == [pid], end
    assert end["server_ended"] == "itself" and end["server_told"].get("enodev"), end


def _gocryptfs(base: Path) -> list[str]:
    (base / "cipher").mkdir()
    (base / "pw").write_text("password\n")
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(base / "pw"), "-scryptn", "10",
                    str(base / "cipher")], check=True, capture_output=True, timeout=60)
    return ["gocryptfs", "-q", "-passfile", str(base / "pw"), str(base / "cipher"),
            str(base / "mnt")]


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_go_server_exits_once_each(isolated: Path) -> None:
    need("gocryptfs")
    for run in range(4):
        base = isolated / f"run{run}"
        base.mkdir()
        (base / "mnt").mkdir()
        argv = _gocryptfs(base)
        trace = base / "t.fzt"
        with recorded_server(argv, base / "mnt", trace, timeout=20) as rec:
            (base / "mnt" / "f").write_text("x" * 10000)
            assert rec.unmount_and_wait(timeout=30) == 0, rec.output()
        left = processes_mentioning(str(base / "cipher"))
        exits, exited, end = _exits(trace)
        decoded = check_trace(trace)
        [started] = [e["pid"] for e in events_of(decoded, "server_start")]
        told = {(e["pid"], e["tid"]) for e in events_of(decoded, "enodev_given")}
        assert told, end
        assert sorted(exited) == sorted(set(exited)), end  # once each
        assert set(exits.values()) == {0}, end
        # the process started and the daemon that served, each by its pid; never a thread
        assert {str(started)} | {str(pid) for pid, _ in told} <= set(exits), (told, end)
        assert not {str(tid) for pid, tid in told if tid != pid} & set(exits), (told, end)
        assert not left, f"run {run}: still running after the recorder exited: {left}"


@pytest.mark.timeout(30)
def test_a_thread_that_ends_traced_is_no_process() -> None:
    """A thread that ends while fusetrace traces it (hangup's PTRACE_SEIZE) is reported to
    fusetrace like a child; it is released, and the process's exit is still recorded, once."""
    script = ("import sys, threading, time\n"
              "t = threading.Thread(target=sys.stdin.readline); t.start(); t.join()\n"
              "time.sleep(0.2)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    assert child.stdin is not None
    seen: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 10
        while len(tids := os.listdir(f"/proc/{child.pid}/task")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [tid] = [int(t) for t in tids if int(t) != child.pid]
        hangup._ptrace(hangup.PTRACE_SEIZE, tid)
        child.stdin.write(b"\n")
        child.stdin.close()  # the thread ends, traced: a zombie until its tracer waits
        procs = ServerProcesses(child, -1, lambda pid, code: seen.append((pid, code)))
        while procs.main_status is None:
            assert time.monotonic() < deadline, seen
            procs.reap()
            time.sleep(0.01)
        procs.reap()
        assert seen == [(child.pid, 0)] and procs.exits == {child.pid: 0}
        assert not procs.alive()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _ended_thread() -> int:
    """The id of a thread of ours that has ended."""
    thread = threading.Thread(target=lambda: None)
    thread.start()
    tid = thread.native_id
    thread.join()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{os.getpid()}/task/{tid}"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert tid is not None
    return tid


def test_a_thread_ended_before_it_is_told_is_no_refusal() -> None:
    """Between finding a reader and tracing it, the thread may end: nothing to tell, and
    no reason to stop telling the others (only a refusal raises)."""
    gone = hangup.Reader(os.getpid(), _ended_thread(), 0, 0)
    assert hangup.give_enodev(gone) is False
    shut: list[bool] = []
    assert hangup.enodev_at_reads([gone], 0, lambda: shut.append(True)) == []
    assert shut == [True]


@pytest.mark.timeout(30)
def test_a_process_whose_main_thread_ended_still_holds_its_socket() -> None:
    """The process is found among the socket's holders through a thread that runs (its
    pid's own fd directory is empty once the main thread has ended)."""
    ours, theirs = socket.socketpair()
    script = ("import ctypes, sys, threading\n"
              "threading.Thread(target=sys.stdin.readline).start()\n"
              "ctypes.CDLL(None).pthread_exit(None)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             pass_fds=[theirs.fileno()])
    assert child.stdin is not None
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.listdir(f"/proc/{child.pid}/fd") == []
        assert child.pid in syscalls.socket_holders(os.fstat(theirs.fileno()).st_ino)
    finally:
        child.stdin.close()
        child.wait(10)
        ours.close()
        theirs.close()
