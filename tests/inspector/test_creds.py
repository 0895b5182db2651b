"""`inspector.exchange.creds` on this kernel: reading a thread's credentials, taking on
another thread's for a call and taking its own back, and what happens when either way is
refused. Each switch runs on a throwaway thread: credentials are per thread, and a thread
that could not take its own back must not be reused (which is the point of RestoreError)."""

from __future__ import annotations

import errno
import os
import platform
import threading
from typing import Any, Callable

import pytest

from inspector.exchange import creds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="taking other credentials needs root")

NOBODY = 65534


def on_a_thread(fn: Callable[[], Any]) -> Any:
    """fn() on a new thread; its result, or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert out, "the thread did not finish"
    return out[0]


#: an unprivileged user with supplementary groups
OTHER = creds.Creds((NOBODY,) * 4, (NOBODY,) * 4, (4321, 4322), 0, 0)


def test_current_reads_this_threads_status() -> None:
    mine = creds.current()
    assert mine.uids[1] == os.geteuid() and mine.gids[1] == os.getegid()
    assert set(mine.groups) == set(os.getgroups())
    assert mine == creds.of_thread(os.getpid(), threading.get_native_id())


def test_of_thread_of_a_gone_thread_raises_oserror() -> None:
    with pytest.raises(OSError):
        creds.of_thread(os.getpid(), 1 << 22)


def test_the_body_runs_with_the_others_credentials_and_only_this_thread_changes() -> None:
    """Supplementary groups included (their array's address was once cut to 32 bits:
    EFAULT for every server thread with groups)."""
    mine = creds.current()

    def switch() -> tuple[creds.Creds, creds.Creds, creds.Creds]:
        with creds.assumed(OTHER):
            inside = creds.current()
            elsewhere = creds.of_thread(os.getpid(), threading.main_thread().native_id)
        return inside, elsewhere, creds.current()

    inside, elsewhere, after = on_a_thread(switch)
    assert inside.uids == OTHER.uids and inside.gids == OTHER.gids
    assert inside.groups == OTHER.groups and inside.cap_effective == 0
    assert elsewhere == mine  # the main thread never changed
    assert after == mine


def test_the_same_credentials_are_a_no_op() -> None:
    mine = creds.current()

    def switch() -> creds.Creds:
        with creds.assumed(mine):
            return creds.current()

    assert on_a_thread(switch) == mine


def test_a_refused_switch_raises_before_the_body_and_leaves_the_thread_as_it_was() -> None:
    mine = creds.current()
    too_many = creds.Creds(mine.uids, mine.gids, tuple(range(70_000)), 0, 0)  # > NGROUPS_MAX
    ran: list[bool] = []

    def switch() -> creds.Creds:
        try:
            with creds.assumed(too_many):
                ran.append(True)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
            return creds.current()
        raise AssertionError("the switch was not refused")

    assert on_a_thread(switch) == mine and not ran


def test_a_refused_way_back_raises_restore_error_after_the_body() -> None:
    """The body drops the permitted capabilities the way back needs: the kernel refuses
    it for real, and the thread says so instead of going on as someone else."""
    nrs = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
    if nrs is None:
        pytest.skip(f"no capset number for {platform.machine()}")
    def switch() -> tuple[BaseException, creds.Creds]:
        try:
            with creds.assumed(OTHER):
                creds._capset(nrs, 0, 0)  # nothing permitted: CAP_SETUID cannot come back
        except creds.RestoreError as exc:
            return exc, creds.current()
        raise AssertionError("the way back was not refused")

    exc, stuck = on_a_thread(switch)
    assert isinstance(exc, creds.RestoreError) and not isinstance(exc, OSError)
    assert exc.body_done and "could not take its own credentials back" in str(exc)
    assert stuck.uids[1] == NOBODY  # that thread is someone else now: it had to be thrown away
    assert creds.current().uids[1] == os.geteuid()  # this one never changed


def test_a_refused_way_back_after_a_refused_switch_is_a_restore_error_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mine = creds.current()
    too_many = creds.Creds(mine.uids, mine.gids, tuple(range(70_000)), 0, 0)

    def refused(nrs: tuple[int, ...], mine: creds.Creds) -> None:
        raise OSError(errno.EPERM, "refused")

    monkeypatch.setattr(creds, "_take_back", refused)

    def switch() -> BaseException:
        try:
            with creds.assumed(too_many):
                pass
        except creds.RestoreError as exc:
            return exc
        raise AssertionError("no RestoreError")

    exc = on_a_thread(switch)
    assert isinstance(exc, creds.RestoreError) and not exc.body_done
    assert isinstance(exc.__cause__, OSError)
