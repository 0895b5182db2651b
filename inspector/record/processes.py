"""The server's processes: the one fusetrace started and every one that held the relay.

A session belongs to whoever holds the server's end of the relay socket, not to the first
process: libfuse without `-f` forks and its parent exits 0 at once, Go servers re-exec
themselves, helpers pass the descriptor on. fusetrace is a child subreaper, so a daemon
whose parent exits becomes its child and its exit status is collected here too. The
holders are looked up in /proc (by the socket's inode) now and then and remembered with
their start times, so a process that has since closed the socket (libfuse closes its
device before a filesystem's last save) is still waited for, and a reused pid never is.

Processes are counted by thread group, not by thread: a server's threads end in any
order, and its main thread (the group's leader, whose pid is the process's) may end
first while the others serve on; /proc then shows the leader as a zombie, and the kernel
reports the process's exit only when its last thread has ended. A thread that ends while
fusetrace traces it (`hangup`) is reported to fusetrace like a child: it is released,
never taken for a process.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

from .. import syscalls
from .cleanup import start_time

_WALL = 0x40000000


class ServerProcesses:
    """Exit statuses and liveness of the server's processes; `on_exit(pid, code)` is
    called once per collected child (code < 0: killed by that signal)."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_inode: int,
                 on_exit: Callable[[int, int], None]) -> None:
        self.proc = proc
        self.inode = socket_inode
        self.exits: dict[int, int] = {}
        self.seen: dict[int, int | None] = {proc.pid: start_time(proc.pid)}
        self._on_exit = on_exit

    @property
    def main_status(self) -> int | None:
        return self.exits.get(self.proc.pid)

    def track(self) -> set[int]:
        """Look for holders of the socket now; returns them."""
        holders = syscalls.socket_holders(self.inode)
        for pid in holders:
            if pid not in self.seen:
                self.seen[pid] = start_time(pid)
        return holders

    def reap(self) -> None:
        """Collect the exit status of every child process that has ended (ours or left to
        us), once; release threads that ended while traced."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            if _field(pid, "Tgid") not in (pid, None):  # a traced thread, not a process
                try:
                    if os.waitpid(pid, os.WNOHANG | _WALL)[0] == 0:
                        return  # not collectable after all: never spin on it
                except ChildProcessError:
                    pass
                continue
            if pid == self.proc.pid:
                self.proc.wait()
                code = self.proc.returncode
            else:
                try:
                    _, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                code = os.waitstatus_to_exitcode(status)
            if pid not in self.exits:
                self.exits[pid] = code
                self._on_exit(pid, code)

    def alive(self) -> list[int]:
        """The server processes not yet ended: a child of ours until its exit is
        collected, any other while a thread of it runs."""
        me = os.getpid()
        return [pid for pid, started in self.seen.items()
                if pid not in self.exits and started is not None and start_time(pid) == started
                and (_field(pid, "PPid") == me or _threads_running(pid))]

    def children_left(self) -> bool:
        """Whether fusetrace still has any child (running or not yet reaped)."""
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def failure(self) -> int:
        """The status to report: the first process's if it failed, else the first failure
        of a later one (a daemon), else 0."""
        main = self.main_status or 0
        if main:
            return main
        return next((code for pid, code in self.exits.items() if code and pid in self.seen), 0)

    def signal(self, sig: int) -> list[int]:
        """Send `sig` to every live server process; returns those it reached."""
        sent = []
        for pid in self.alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
            sent.append(pid)
        return sent


def _field(pid: int, name: str) -> int | None:
    """A number from /proc/PID/status (PID may be a thread's), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return int(value.split()[0])
    except (OSError, ValueError):
        pass
    return None


def _threads_running(pid: int) -> bool:
    """Whether any thread of process `pid` has not ended (its leader may have)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X"):
            return True
    return False


def name_of(pid: int) -> str:
    """The process's command name, for messages."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return str(pid)


def described(code: int) -> str:
    """`exited with status N` / `was killed by SIGNAME`."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
