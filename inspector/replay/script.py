"""A trace read into what a replay needs: the exchanges to play, in recorded order.

The whole trace is checked before anything runs (a cut, corrupt or newer-format trace
stops the replay with one line and nothing written). Then:

- each request becomes an `Exchange`, with its recorded reply (paired by `unique`), the
  ioctls the server made while handling it (see `attribute`), and whether it was
  interrupted before being answered;
- notifications from the server are kept apart: they are matched as a set at the end,
  not required to come at the same moment;
- `steps` is the recorded order: SEND a request, EXPECT a reply. Requests the recorder
  could not forward (`request_not_forwarded`) are left out: the server never saw them;
- `ending` is how the recorded session ended (the recorder's `session_end` and the first
  server process's `server_exit`), so the replay can end the server the same way and
  compare its exit.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from dissectors.constants import NO_REPLY_OPCODES, Opcode
from dissectors.ioctls import DevIoctl
from dissectors.quick import Brief, peek_reply, peek_request
from traces import Kind, Record, TraceReadError, TraceReader

from ..lifecycles.wire import interrupted_unique
from .attribute import Attributor, ioctl_backing_id
from .views import RequestView

SEND, EXPECT = 0, 1
#: ioctls a replay compares; CLONE and SYNC_INIT are the proxy's business, not the server's.
COMPARED_IOCTLS = frozenset({DevIoctl.BACKING_OPEN, DevIoctl.BACKING_CLOSE,
                             DevIoctl.PASSTHROUGH_OPEN_V1, DevIoctl.PASSTHROUGH_OPEN_V2})
_INTERRUPT = int(Opcode.INTERRUPT)
_REQUEST, _REPLY, _IOCTL, _EVENT = Kind.REQUEST, Kind.REPLY, Kind.IOCTL, Kind.EVENT


class ReplayError(Exception):
    """The replay cannot run or go on; the message is one line for the user."""


@dataclass
class IoctlRecord:
    index: int  # record index (or event number, on the replay side)
    cmd: int
    arg: bytes
    result: int
    errno: int
    path: str | None


@dataclass
class Exchange:
    """One recorded request and what the recording says came of it."""

    index: int
    raw: bytes
    opcode: int
    unique: int
    true_len: int | None = None  # the request's length, when the snap length cut `raw`
    reply_index: int | None = None
    reply: bytes | None = None
    reply_true_len: int | None = None
    interrupted_at: int | None = None  # record index of an INTERRUPT sent before the reply
    ioctls: list[IoctlRecord] = field(default_factory=list)
    #: set by `order.plan`, which decodes the recorded messages once
    view: RequestView | None = None  # the request's server-chosen slots
    pending: Any = None  # what decoding its reply needs (the session decoder's note)
    reply_brief: Brief | None = None  # the recorded reply's fast decode

    @property
    def answered(self) -> bool:
        return self.reply is not None


@dataclass(frozen=True)
class Ending:
    """How the recorded session ended."""

    index: int  # the session_end record
    reason: str  # "unmounted", "interrupted by SIGINT", "server exited" …
    server_ended: str  # "itself", or the signal fusetrace sent
    exit: int | None  # the first server process's: status, or -signal (None: not seen)

    @property
    def unmounted(self) -> bool:
        """The kernel ended the session (the user's umount, or fusetrace's on a signal):
        the server was told with ENODEV on its read of the device."""
        return self.reason == "unmounted" or self.reason.startswith("interrupted")

    @property
    def by_itself(self) -> bool:
        """The server ended the session (it exited or closed its connection first)."""
        return self.reason in ("server exited", "server closed the connection")


def exit_text(code: int) -> str:
    """An exit as `subprocess` reports it (-N: killed by signal N), in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _ending(records: list[Any]) -> Ending | None:
    main = next((r.meta.get("pid") for r in records if r.event == "server_start"), None)
    code = None
    for r in records:
        if r.event == "server_exit" and r.meta.get("pid") == main and code is None:
            code = (-int(r.meta["signal"]) if "signal" in r.meta
                    else int(r.meta.get("status") or 0))
    end = next((r for r in reversed(records) if r.event == "session_end"), None)
    if end is None:
        return None
    return Ending(end.index, str(end.meta.get("reason") or ""),
                  str(end.meta.get("server_ended") or "itself"), code)


@dataclass
class Script:
    path: str
    header: dict[str, Any]
    exchanges: list[Exchange]
    steps: list[tuple[int, Exchange]]
    notifications: list[tuple[int, bytes]]  # (record index, raw)
    startup_ioctls: list[IoctlRecord]  # made before the first request
    cut_writes: int  # WRITE requests whose data the snap length cut
    ending: Ending | None = None  # None: the trace does not say (not made by `record`)
    route: str | None = None  # how the server got its connection ("device-open", "helper")

    @property
    def requests(self) -> int:
        return len(self.exchanges)


def _true_len(rec: Record) -> int | None:
    """The message's length as sent, when the snap length kept less of it."""
    return rec.true_len if rec.truncated else None


def load(path: str | os.PathLike[str]) -> Script:
    """Read and check a whole trace; ReplayError says what is wrong with it."""
    where = os.fspath(path)
    try:
        with TraceReader(where) as reader:
            records = list(reader)
            tail, header = reader.tail, reader.header
    except TraceReadError as exc:
        raise ReplayError(str(exc)) from None
    if tail is not None:
        raise ReplayError(f"{where}: {tail}; a replay needs the whole trace")
    return _build(where, header, records)


def _build(where: str, header: dict[str, Any], records: list[Any]) -> Script:
    exchanges: dict[int, Exchange] = {}
    ordered: list[Exchange] = []
    steps: list[tuple[int, Exchange]] = []
    notifications: list[tuple[int, bytes]] = []
    events = [r for r in records if r.kind is _EVENT]  # (Kind.X costs a lookup each time)
    dropped: set[int] = {r.meta.get("unique") for r in events
                         if r.event == "request_not_forwarded"}
    answered = {peek_reply(r.raw)[1] for r in records if r.kind is _REPLY}
    attributor = Attributor()
    ioctls: dict[int, IoctlRecord] = {}
    cut_writes = 0
    for rec in records:
        kind = rec.kind
        if kind is _REQUEST:
            opcode, unique, _ = peek_request(rec.raw)
            if not opcode or unique in dropped or unique in exchanges:
                continue  # a cut header, never forwarded, or a unique seen twice: unplayable
            ex = Exchange(rec.index, rec.raw, opcode, unique, _true_len(rec))
            if ex.true_len is not None and opcode == Opcode.WRITE:
                cut_writes += 1
            if opcode == _INTERRUPT:
                target = exchanges.get(interrupted_unique(rec.raw) or 0)
                if target is not None and not target.answered and target.interrupted_at is None:
                    target.interrupted_at = rec.index
            exchanges[unique] = ex
            ordered.append(ex)
            steps.append((SEND, ex))
            attributor.request(unique, opcode, opcode not in NO_REPLY_OPCODES and unique in answered,
                               rec.raw)
        elif kind is _REPLY:
            _, unique = peek_reply(rec.raw)
            if unique == 0:
                notifications.append((rec.index, rec.raw))
                continue
            ex = exchanges.get(unique)
            if ex is None or ex.answered:
                continue  # a reply to nothing recorded: no request to replay for it
            ex.reply_index, ex.reply = rec.index, rec.raw
            ex.reply_true_len = _true_len(rec)
            steps.append((EXPECT, ex))
            attributor.reply(unique, rec.raw)
        elif kind is _IOCTL and rec.meta["cmd"] in COMPARED_IOCTLS:
            meta = rec.meta
            ioctls[rec.index] = IoctlRecord(rec.index, meta["cmd"], bytes(meta.get("arg") or b""),
                                            int(meta.get("result") or 0), int(meta.get("errno") or 0),
                                            meta.get("path"))
            call = ioctls[rec.index]
            attributor.ioctl(rec.index, call.cmd, ioctl_backing_id(call.cmd, call.arg, call.result))
    attributor.finish()
    startup: list[IoctlRecord] = []
    for owner, tokens in attributor.owned.items():
        calls = [ioctls[token] for token in sorted(tokens)]
        (exchanges[owner].ioctls if owner is not None else startup).extend(calls)
    if not ordered or ordered[0].opcode != Opcode.INIT:
        raise ReplayError(f"{where}: the trace does not start with the kernel's INIT request "
                          f"(a replay needs a session recorded from its start)")
    route = next((r.meta.get("route") for r in events if r.event == "connected"), None)
    return Script(where, header, ordered, steps, notifications, startup, cut_writes,
                  _ending(events), route)
