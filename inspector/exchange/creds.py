"""Doing a call with a server thread's credentials instead of the recorder's.

The kernel checks the BACKING_OPEN caller's CAP_SYS_ADMIN and stores the caller's
credentials with the backing file, then uses them for every passthrough read and write;
mount(2) checks CAP_SYS_ADMIN too. The recorder makes those calls for the server, so it
takes on the calling thread's credentials (uids, gids, supplementary groups, effective
capabilities) for the call: a server refused directly is refused recorded, and a backing
file is accessed as the server would access it.

Credentials are per thread in Linux, but glibc's setuid family changes every thread of the
process; here the raw syscalls change only the calling thread, which must be a thread of
the recorder's own that does nothing else meanwhile (the trap's). `SECBIT_KEEP_CAPS` keeps
the permitted set across the uid change so the thread can change back. When it cannot
change back, `RestoreError` (not an OSError: no errno describes it) says that thread must
do nothing more: its identity is no longer the recorder's.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

_libc = ctypes.CDLL(None, use_errno=True)

#: setgroups, setresuid, setresgid, setfsuid, setfsgid, capget, capset
_NR = {
    "x86_64": (116, 117, 119, 122, 123, 125, 126),
    "aarch64": (159, 147, 149, 151, 152, 90, 91),
}
PR_SET_KEEPCAPS = 8
_CAP_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class RestoreError(Exception):
    """This thread could not take its own credentials back after a call made with someone
    else's. `body_done`: the call itself had completed (what it made exists)."""

    def __init__(self, message: str, body_done: bool) -> None:
        super().__init__(message)
        self.body_done = body_done


@dataclass(frozen=True)
class Creds:
    """The parts of a thread's credentials the kernel's checks read."""

    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_effective: int
    cap_permitted: int


def of_thread(pid: int, tid: int) -> Creds:
    """A thread's credentials, from /proc (raises OSError when it is gone)."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    uids = tuple(int(v) for v in fields["Uid"].split())
    gids = tuple(int(v) for v in fields["Gid"].split())
    return Creds(uids, gids, tuple(int(g) for g in fields["Groups"].split()),  # type: ignore[arg-type]
                 int(fields["CapEff"], 16), int(fields["CapPrm"], 16))


def current() -> Creds:
    return of_thread(os.getpid(), threading.get_native_id())


def _call(nr: int, *args: int | ctypes.Array[ctypes.c_uint32]) -> None:
    if _libc.syscall(nr, *args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"changing credentials: {os.strerror(err)}")


def _capset(nr: int, effective: int, permitted: int) -> None:
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)(_CapData(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, 0),
                          _CapData(effective >> 32, permitted >> 32, 0))
    if _libc.syscall(nr, ctypes.byref(header), data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _become(nrs: tuple[int, ...], creds: Creds, keep: int) -> None:
    """This thread takes `creds`, with `keep` as its permitted set."""
    setgroups, setresuid, setresgid, setfsuid, setfsgid, _capget, capset = nrs
    groups = (ctypes.c_uint32 * max(len(creds.groups), 1))(*creds.groups)
    _call(setgroups, len(creds.groups), groups)  # the array, as a pointer (an int would be cut to 32 bits)
    _call(setresgid, *creds.gids[:3])
    _call(setresuid, *creds.uids[:3])
    _libc.syscall(setfsgid, creds.gids[3])  # returns the old value, never fails visibly
    _libc.syscall(setfsuid, creds.uids[3])
    _capset(capset, creds.cap_effective & keep, keep)


@contextmanager
def assumed(creds: Creds) -> Iterator[None]:
    """Run the body with `creds` on this thread (nothing to do when they are ours).

    Raises OSError before the body when the switch is refused (an ordinary user cannot
    take another's credentials); a failure to switch back raises RestoreError, after the
    body or instead of that OSError, since the thread must not go on with the wrong
    identity."""
    mine = current()
    if creds == mine:
        yield
        return
    nrs = _NR.get(platform.machine())
    if nrs is None:
        raise OSError(0, f"no syscall numbers for {platform.machine()}")
    if _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == -1:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    try:
        _become(nrs, creds, mine.cap_permitted)
    except OSError:
        _restore(nrs, mine, body_done=False)
        raise
    done = False
    try:
        yield
        done = True
    finally:
        _restore(nrs, mine, body_done=done)


def _restore(nrs: tuple[int, ...], mine: Creds, body_done: bool) -> None:
    try:
        _take_back(nrs, mine)
    except OSError as exc:
        raise RestoreError(f"the recorder's thread could not take its own credentials back: "
                           f"{exc.strerror or exc}", body_done) from exc


def _take_back(nrs: tuple[int, ...], mine: Creds) -> None:
    _capset(nrs[6], mine.cap_permitted, mine.cap_permitted)  # CAP_SETUID/SETGID back first
    _become(nrs, mine, mine.cap_permitted)
    _capset(nrs[6], mine.cap_effective, mine.cap_permitted)
    _libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    if current() != mine:
        raise OSError(0, "the recorder's thread could not take its own credentials back")
