"""`fusetrace replay TRACE -- SERVER [ARGS...]`: a recorded session played to a server under
test, with nothing mounted, and every reply compared with the recorded one.

    >>> report = replay("session.fzt", ["python", "myfs.py", "/mnt"])
    >>> report.ok, report.differences, print(report.text())
    >>> report.outcome  # how it ended, as data: Outcome(end=End.EXITED, status=3, …)

The server is started as `fusetrace record` starts it (its mountpoint argument becomes
`/dev/fd/N`, one end of a socketpair; the recorder's seccomp trap, `inspector.exchange`,
catches its /dev/fuse ioctls, emulated here), so it runs as an ordinary user and no
/dev/fuse is touched.

Modules: `script` (the trace read and checked, requests paired with replies and ioctls),
`attribute` (which request an ioctl belongs to), `views` (messages as named fields),
`translate` (server-chosen values: recorded → replayed; which fields hold them is
`dissectors.ids`), `order` (the send order: what each request waits for), `masks`,
`hidden` (what the trace cannot hold: files written through passthrough), `emulate` (the
kernel's side of the ioctls, emulated), `server` (the process under test, ended as the
recording ended), `engine` (the loop and the comparisons, directory listings by name),
`report` (the differences, and the `Outcome` as data), `command` (the CLI).

Caveats: a trace whose WRITE data was cut by the snap length replays the missing bytes as
zeros (READ data is then compared by length); requests that block until a later request
(SETLKW) need `overlap`; NOTIFY_REPLY's unique (chosen by the server in RETRIEVE) is not
translated.
"""

from __future__ import annotations

import os
from os import PathLike
from typing import Sequence

from traces import TraceWriter

from .masks import Masks
from .report import Difference, End, FieldDiff, Outcome, ReplayReport
from .script import ReplayError, load

__all__ = ["Difference", "End", "FieldDiff", "Masks", "Outcome", "ReplayError", "ReplayReport",
           "replay"]


def replay(trace: str | PathLike[str], server: Sequence[str], *, masks: Masks | None = None,
           timeout: float = 10.0, overlap: bool = False, write: str | PathLike[str] | None = None,
           mountpoint: str | None = None, strict_order: bool = False,
           serial: bool = False) -> ReplayReport:
    """Replay `trace` against `server` (its command line, mountpoint included).

    Never raises for a bad trace, a bad command line, or a server that crashes or hangs:
    the report's `error` says what happened (and nothing is written for a bad trace).
    `timeout` is per request; by default read-only requests are pipelined (see `engine`),
    `serial` sends one request at a time, `overlap` reproduces the recorded concurrency;
    `write` saves the replayed conversation as a trace;
    `mountpoint` names the server's mountpoint argument when the guess is wrong;
    `strict_order` pairs directory entries by position instead of by name.
    """
    from .engine import Replayer

    where = os.fspath(trace)
    argv = list(server)
    try:
        script = load(where)
        replayer = Replayer(script, argv, masks or Masks(), timeout, overlap, mountpoint,
                            strict_order, serial)
    except ReplayError as exc:
        return ReplayReport(where, argv, error=str(exc),
                            outcome=Outcome(End.REFUSED, reason=str(exc)))
    writer = None
    if write is not None:
        header = {"source": "replay", "replay_of": os.path.abspath(where),
                  "server_argv": replayer.server.argv, "argv": replayer.server.argv,
                  "kernel": os.uname().release, "snaplen": 0,
                  "mountpoint": script.header.get("mountpoint")}
        try:
            writer = TraceWriter(write, header)
        except OSError as exc:
            why = f"{os.fspath(write)}: {exc.strerror}"
            return ReplayReport(where, argv, error=why, outcome=Outcome(End.REFUSED, reason=why))
    try:
        return replayer.run(writer)
    finally:
        if writer is not None:
            writer.close()
