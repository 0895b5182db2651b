"""The end-of-session ptrace helpers (`inspector.exchange.hangup`) leave processes as the
kernel would: a tracee that exits while followed is not kept from its real parent."""

from __future__ import annotations

import subprocess
import time

import pytest

from inspector.exchange import hangup


@pytest.mark.timeout(30)
def test_a_traced_grandchild_that_exits_is_seen_exiting_by_its_parent() -> None:
    """A shell wrapper around a server: the server (traced by us, its parent the shell)
    exits while we follow it; the shell must see that exit and end, as untraced."""
    if reason := hangup.available():
        pytest.skip(reason)
    shell = subprocess.Popen(["sh", "-c", "sleep 0.5 & echo $!; wait $!; echo waited $?"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert shell.stdout is not None
        child = int(shell.stdout.readline())
        hangup._ptrace(hangup.PTRACE_SEIZE, child)
        hangup._ptrace(hangup.PTRACE_INTERRUPT, child)
        assert hangup._stop(child, time.monotonic() + 5) is not None  # the interrupt stop
        hangup._ptrace(hangup.PTRACE_SYSCALL, child)
        while hangup._stop(child, time.monotonic() + 5) is not None:  # follow it to its exit
            hangup._ptrace(hangup.PTRACE_SYSCALL, child)
        out, _ = shell.communicate(timeout=10)
        assert out == "waited 0\n" and shell.returncode == 0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


@pytest.mark.timeout(30)
def test_a_thread_gone_before_it_is_told_is_not_a_refusal() -> None:
    """A server thread seen blocked in its read may exit before ptrace reaches it (the
    race that made a replay's report say "ENODEV could not be given (ptrace: No such
    process)" every other run): it is not told, and nothing is raised."""
    if reason := hangup.available():
        pytest.skip(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()
    reader = hangup.Reader(gone.pid, gone.pid, 0, 0)
    assert hangup.give_enodev(reader) is False
    assert hangup.enodev_at_reads([reader], 0, lambda: None) == []
