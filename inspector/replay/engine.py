"""The replay loop: play a `Script` to a server under test and compare what comes back.

Order (`order`): requests go out in recorded order, held to what they depend on: the
replies that handed out the ids they name, and the release that freed an id their
recorded reply reuses. By default pipelined: a request that changes nothing
(`dissectors.constants.READ_ONLY_OPCODES`: LOOKUP, GETATTR, READ, READDIR …) is sent
while earlier read-only requests are still out (up to `PIPELINE` of them), since their
answers cannot depend on each other; any other request goes out alone, once everything
before it is answered, and is answered before anything after it goes out. So what a
server answers never depends on timing, and it can work on the next requests while the
replay compares. With `serial`, every request goes out alone. Either way a request the
kernel interrupted is the exception: its INTERRUPT (and what follows it) goes out while
it is still pending, as recorded. With `overlap`, requests go out where the trace has
them and each reply is awaited where the trace has it, under the same rules, so the
recorded concurrency is reproduced (and the server's own ordering may vary).

Divergence, not damage: a request naming a node id or file handle that the recording's
server handed out but the replayed one did not (its reply differed: an error, a negative
entry) is not sent, since the kernel could not have sent it. One difference, pinned to
the reply that diverged, counts the requests left out because of it (and the requests
that depended on those); the server is never sent a request naming an id it never gave.

Comparison happens request by request: first the ioctls the server made while handling
it (so a BACKING_OPEN's id is known before the OPEN reply that carries it), then the
reply, field by field through the translation and the masks (directory listings entry
by entry, paired by name). Notifications are matched as a set at the end, and the
server's exit with the recorded one once it was ended as the recording ended.
Differences are pinned to the recorded record they concern and reported in record order.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from dissectors import SessionDecoder, line
from dissectors.constants import NO_REPLY_OPCODES, READ_ONLY_OPCODES, Opcode
from dissectors.offsets import IN_HEADER_SIZE
from dissectors.opcodes import DIR_READS, FILE_OPENS, FORGETS, RELEASES, UNPAIRED
from dissectors.context import DEFAULT_CONTEXT, Dialect
from dissectors.ids import field_offsets
from dissectors.ioctls import DevIoctl, ioctl_arg_fields
from dissectors.quick import brief_reply, brief_request, compiled, peek_reply
from dissectors.structs import FuseBatchForgetIn, FuseForgetOne, FuseInHeader
from traces import TraceWriter

from ..lifecycles.wire import interrupted_unique
from .attribute import Attributor, ioctl_backing_id
from .emulate import IoctlCall, IoctlLog, negotiated_depth
from .fast import Shape, ShapeKey, shape, shape_key
from .hidden import WHY, WrittenThrough, hides
from .masks import Masks, notify_key
from .order import plan
from .report import Difference, End, FieldDiff, Outcome, ReplayReport
from .script import COMPARED_IOCTLS, SEND, Exchange, IoctlRecord, ReplayError, Script, exit_text
from .server import GRACE, Closed, ServerUnderTest
from .translate import Translator
from .views import (
    FH,
    IGNORED,
    NODE,
    PLAIN,
    Entry,
    Item,
    RequestView,
    ReplyView,
    entries,
    names_text,
    patch,
    reply_view,
    request_view,
    show,
)

_OPENS = FILE_OPENS
#: Replies never compared as bytes: INIT (it sets up the session) and opens (what they
#: open through passthrough is noted on the way)
_FULL_WAY = frozenset(int(op) for op in (Opcode.INIT, *_OPENS))
_READ_ONLY = frozenset(int(op) for op in READ_ONLY_OPCODES)
#: Read-only requests out at once, at most: enough to keep a server's threads busy while
#: the replay compares, few enough that a slow server is not flooded.
PIPELINE = 8
_U32 = struct.Struct("<I")
_LEN_AT = field_offsets(FuseInHeader)["len"][0]
_COUNT_AT = field_offsets(FuseBatchForgetIn)["count"][0]
_FORGET_ONE_SIZE = compiled(FuseForgetOne).st.size
_OPEN_IOCTLS = frozenset({DevIoctl.BACKING_OPEN, DevIoctl.PASSTHROUGH_OPEN_V1,
                          DevIoctl.PASSTHROUGH_OPEN_V2})


class Hang(Exception):
    def __init__(self, ex: Exchange) -> None:
        self.ex = ex


class Crash(Exception):
    def __init__(self, ex: Exchange | None) -> None:
        self.ex = ex


@dataclass
class _Sent:
    ex: Exchange
    view: RequestView  # of the recorded request
    compared: bool = False

    @property
    def fh(self) -> int:
        return next((value for _, kind, value in self.view.slots if kind == FH), 0)

    def text(self) -> str:
        return f"{line(self.view.brief)} (record {self.ex.index})"


def _errno_text(value: int) -> str:
    return show(value, None) if value >= 0 else f"{value} ({os.strerror(-value)})"


def _first_change(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at byte {at}"


def _shown(items: list[Item]) -> list[tuple[str, str]]:
    return [(path, show(value, fmt)) for path, value, _, fmt in items]


@dataclass
class _Diverged:
    """A recorded reply the replay did not reproduce in an id it handed out, and the
    requests not sent because of it."""

    source: Exchange  # the request whose reply diverged
    first: Exchange  # the first request not sent
    why: str  # how it diverged ("its recorded reply handed out node id 797, …")
    requests: int = 0

    def difference(self, sent: dict[int, _Sent]) -> Difference:
        src = self.source
        mine = sent.get(src.unique)
        about = mine.text() if mine is not None else f"the request of record {src.index}"
        first = line(self.first.view.brief) if self.first.view is not None else ""
        n = self.requests
        return Difference(
            src.reply_index if src.reply_index is not None else src.index, "not sent", about,
            f"{self.why}: {n} later "
            f"request{'s' if n != 1 else ''} naming it (or what those would have handed out) "
            f"{'were' if n != 1 else 'was'} not sent, as the kernel could not have sent "
            f"{'them' if n != 1 else 'it'} (the first: {first}, record {self.first.index})")


@dataclass
class _Counts:
    requests: int = 0
    replies: int = 0
    ioctls: int = 0
    notifications: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Replayer:
    def __init__(self, script: Script, server: Sequence[str], masks: Masks, timeout: float,
                 overlap: bool, mountpoint: str | None = None, strict_order: bool = False,
                 serial: bool = False) -> None:
        self.script = script
        self.strict_order = strict_order
        self.masks = masks
        self.timeout = timeout
        self.overlap = overlap
        self.serial = serial
        self.writer: TraceWriter | None = None
        self.tr = Translator()
        self.plan = plan(script)
        self.rec = self.plan.decoder  # the recorded side, decoded once by `plan`
        self.rep = SessionDecoder()
        self.diffs: list[Difference] = []
        self.counts = _Counts()
        self.arrived: dict[int, bytes] = {}
        self.notifications: list[tuple[int, bytes]] = []  # (last record sent, raw)
        self.sent: dict[int, _Sent] = {}
        self.skipped: dict[int, int] = {}  # unique of a request not sent → the diverged one's
        self.diverged: dict[int, _Diverged] = {}  # unique of a diverged reply → what it cost
        #: (kind, recorded value) → unique of the request whose reply took its replayed
        #: value for another recorded one (the one-to-one rule broken)
        self.displaced: dict[tuple[int, int], int] = {}
        self._comparing = 0  # unique of the request whose reply is being compared
        self._shapes: dict[ShapeKey, Shape | None] = {}  # reply layouts compared as bytes
        self.outstanding: dict[int, _Sent] = {}
        self.last_index = -1
        self.stack_depth = 0  # passthrough's, as the replayed INIT negotiated it
        self.written = WrittenThrough()
        self._hiding: tuple[str, ...] = ()  # path prefixes of the reply compared now it hides
        self.hidden: dict[str, int] = {}  # mask → differences it hid
        self.attr = Attributor()
        self.calls: dict[int, IoctlCall] = {}
        self._queue: list[IoctlCall] = []
        self._lock = threading.Lock()
        self.log = IoctlLog(None, self._on_call)
        self.server = ServerUnderTest(server, self.log, lambda: self.stack_depth, mountpoint,
                                      script.route)
        self.reads_by_length = script.cut_writes > 0

    # --- the run ----------------------------------------------------------------------

    def run(self, writer: TraceWriter | None = None) -> ReplayReport:
        self.writer = self.log.writer = writer
        report = ReplayReport(self.script.path, list(self.server.argv), masks=self.masks.describe())
        if self.reads_by_length:
            report.notes.append(
                f"{self.script.cut_writes} WRITE requests were cut by the recording's snap length "
                f"(-s): their missing bytes were replayed as zeros, so READ data is compared by "
                f"length only (record with -s 0 for a byte-exact replay)")
        try:
            self.server.start()
            self._event("server_start", pid=self.server.proc.pid if self.server.proc else 0,
                        argv=self.server.argv)
            if self.overlap:
                for kind, ex in self.plan.steps:
                    if kind == SEND:
                        self._go(ex)
                    elif ex.unique in self.sent:
                        self._await(self.sent[ex.unique])
            else:
                for ex in self.plan.order:
                    if self.serial or ex.opcode not in _READ_ONLY or ex.interrupted_at is not None:
                        self._settle(ex.index)
                    else:
                        self._make_room(ex.index)
                    self._go(ex)
            self._settle(None)
            self._end()
        except Hang as hang:
            report.error = (f"no reply to {self.sent[hang.ex.unique].text()} within "
                            f"{self.timeout:g} s: the server hangs on it")
            report.outcome = Outcome(End.NO_REPLY, seconds=self.timeout, record=hang.ex.index,
                                     opcode=hang.ex.opcode)
            self.server.kill()
        except Crash as crash:
            report.error, report.outcome = self._crash(crash.ex)
        except ReplayError as exc:
            report.error = str(exc)
            report.outcome = Outcome(End.REFUSED, reason=str(exc))
            self.server.kill()
        finally:
            self.server.stop()
            report.server_log = self.server.server_output()
            self.server.close()
        if report.error is None:
            self._sweep()
            report.error = self._compare_exit()
            code = self.server.proc.returncode if self.server.proc is not None else None
            report.outcome = Outcome(
                End.FINISHED if report.error is None else End.KILLED,
                status=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None)
        status = self.server.status()
        report.server_exit = (f"{status}" + (f" ({self.server.exit_note})" if self.server.exit_note
                                             else "")) if status else self.server.exit_note
        self._event("server_exit", how=report.server_exit or "")
        self.diffs += [d.difference(self.sent) for d in self.diverged.values()]
        self.diffs.sort(key=lambda d: d.record)
        report.differences = self.diffs
        report.hidden = dict(sorted(self.hidden.items()))
        if self.written.ever:
            report.notes.append(
                f"{self.written.ever} file{'s were' if self.written.ever > 1 else ' was'} opened "
                f"for writing through passthrough: their size, blocks and times are not "
                f"compared from then on (the kernel writes the data; the trace has none of it)")
        c = self.counts
        report.counts = {"requests": c.requests, "replies": c.replies, "ioctls": c.ioctls,
                         "notifications": c.notifications, **c.extra}
        if self.skipped:
            report.counts["not_sent"] = len(self.skipped)
        self._event("session_end", reason=report.error or "replayed",
                    differences=len(self.diffs))
        return report

    def _crash(self, ex: Exchange | None) -> tuple[str, Outcome]:
        """The server closed its connection while `ex` was being handled: how it ended."""
        proc = self.server.proc
        if proc is not None:
            try:
                proc.wait(GRACE)
            except subprocess.TimeoutExpired:  # still running: it only closed its connection
                pass
        code = proc.returncode if proc is not None else None
        how = self.server.status() or "closed its connection"
        name = self.server.argv[0] if self.server.argv else "the server"
        before_init = ex is None or ex.opcode == Opcode.INIT
        # pipelined requests still unanswered: any of them may be the one it died on
        others = tuple(sorted(s.ex.index for s in self.outstanding.values()
                              if ex is not None and s.ex is not ex and not s.compared
                              and s.ex.interrupted_at is None))
        if before_init:
            text = f"{name} {how} before answering the kernel's INIT: it did not start"
        else:
            what = self.sent[ex.unique].text() if ex.unique in self.sent else "a request"
            text = f"the server {how} while handling {what}"
            if others:
                text += (f" or one of {len(others)} more requests pipelined with it (records "
                         f"{', '.join(map(str, others))}; --serial pins the one)")
        outcome = Outcome(
            End.KILLED if code is not None and code < 0 else End.EXITED,
            status=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            record=ex.index if ex is not None else None,
            opcode=ex.opcode if ex is not None else None, before_init=before_init,
            pipelined=others)
        return text, outcome

    def _event(self, name: str, **data: Any) -> None:
        if self.writer is not None:
            self.writer.event(name, **data)

    # --- sending and receiving ---------------------------------------------------------

    def _on_call(self, call: IoctlCall) -> None:
        """From the trap's thread: queued for the main thread."""
        with self._lock:
            self._queue.append(call)

    def _drain_calls(self) -> None:
        with self._lock:
            calls, self._queue = self._queue, []
        for call in calls:
            if call.cmd in COMPARED_IOCTLS:
                self.calls[call.seq] = call
                self.attr.ioctl(call.seq, call.cmd,
                                ioctl_backing_id(call.cmd, call.arg, call.result))

    def _go(self, ex: Exchange) -> None:
        """Send `ex` once what it depends on is back, unless the replay diverged from the
        recording in a reply it depends on."""
        for unique in self.plan.needs.get(ex.unique, ()):
            sent = self.sent.get(unique)
            if sent is not None:
                self._await(sent)
        found = self._diverged_source(ex)
        if found is None:
            self._send(ex)
            return
        if ex.opcode == Opcode.BATCH_FORGET:
            kept = self._forgets_kept(ex)
            if kept is not None:
                self._send(kept)
                return
        source, why = found
        root = self.skipped.get(source, source)
        self.skipped[ex.unique] = root
        cost = self.diverged.get(root)
        if cost is None:
            cost = self.diverged[root] = _Diverged(self.plan.by_unique[root], ex, why)
        cost.requests += 1

    def _forgets_kept(self, ex: Exchange) -> Exchange | None:
        """A BATCH_FORGET some of whose nodes the replayed server never handed out, as the
        kernel would have sent it: only the others (None when none is left). The rest's
        lookups still go back, so their ids can be handed out again as recorded."""
        assert ex.view is not None
        producers = self.plan.producers.get(ex.unique, {})
        kept = [(at, node) for at, node, _ in ex.view.forgets
                if (NODE, node) not in producers or node in self.tr.nodes.forward]
        if not kept:
            return None
        at = ex.view.forgets[0][0]
        size = _FORGET_ONE_SIZE
        raw = bytearray(ex.raw[:at])
        for where, _ in kept:
            raw += ex.raw[where:where + size]
        _U32.pack_into(raw, _LEN_AT, len(raw))
        _U32.pack_into(raw, IN_HEADER_SIZE + _COUNT_AT, len(kept))
        brief = brief_request(bytes(raw), self.rec.ctx)
        return replace(ex, raw=bytes(raw), view=request_view(bytes(raw), brief), true_len=None)

    def _diverged_source(self, ex: Exchange) -> tuple[int, str] | None:
        """(unique of the request whose reply diverged, how) when `ex` names an id this
        replay does not have: one its recorded reply handed out and the replayed one did
        not, or one whose replayed value a later reply took for another (the one-to-one
        rule broken); also an INTERRUPT of a request not sent."""
        if ex.opcode == Opcode.INTERRUPT:
            target = interrupted_unique(ex.raw)
            if target in self.skipped:
                return target, "the request it interrupts was not sent"
        for (kind, value), source in self.plan.producers.get(ex.unique, {}).items():
            if source in self.skipped:
                return source, ""
            table = self.tr.nodes if kind == NODE else self.tr.fhs
            if value in table.forward:
                continue
            what = f"{table.what} {value}"
            taker = self.displaced.get((kind, value))
            if taker is not None:
                return taker, (f"its reply took the replayed value of recorded {what} for "
                               f"another one while {what} was still in use")
            return source, f"its recorded reply handed out {what}, this replay's did not"
        return None

    def _send(self, ex: Exchange) -> None:
        self._drain_calls()
        assert ex.view is not None
        view = ex.view
        raw = patch(ex.raw, self.tr.rewrite(view))
        if ex.true_len is not None:  # cut by the snap length: the rest as zeros
            raw += bytes(ex.true_len - len(raw))
        pending = ex.pending
        if pending is not None and ex.opcode != Opcode.INIT and self.rep.ctx == self.rec.ctx:
            self.rep.pending[ex.unique] = pending  # what decoding its reply needs: the same
        else:
            self.rep.feed_request(raw)
        awaits = ex.answered and ex.opcode not in NO_REPLY_OPCODES
        self.attr.request(ex.unique, ex.opcode, awaits, raw)
        sent = self.sent[ex.unique] = _Sent(ex, view)
        try:
            self.server.send(raw)
        except Closed:
            raise Crash(ex) from None
        if self.writer is not None:
            self.writer.request(raw)
        self.counts.requests += 1
        if awaits:
            self.outstanding[ex.unique] = sent
        self.last_index = ex.index
        if ex.opcode in FORGETS:
            self.tr.forgotten(view)
            for node in [n for _, n, _ in view.forgets] or [view.brief.nodeid]:
                if node not in self.tr.nodes.refs:
                    self.written.forgotten(node)
        elif ex.opcode in RELEASES:
            self.tr.released(view)

    def _settle(self, before: int | None) -> None:
        """Await every outstanding reply, except those of requests interrupted by then."""
        for sent in list(self.outstanding.values()):
            at = sent.ex.interrupted_at
            if before is not None and at is not None and at <= before:
                continue
            self._await(sent)

    def _make_room(self, before: int) -> None:
        """Before a read-only request: await replies until only read-only requests are out
        (those interrupted by now aside), fewer than PIPELINE of them."""
        while True:
            waiting = [sent for sent in self.outstanding.values()
                       if sent.ex.interrupted_at is None or sent.ex.interrupted_at > before]
            if not waiting or (len(waiting) < PIPELINE
                               and all(w.ex.opcode in _READ_ONLY for w in waiting)):
                return
            self._await_any(waiting)

    def _await_any(self, waiting: list[_Sent]) -> None:
        """Compare the first reply of `waiting` that comes (the oldest hangs if none does)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for sent in waiting:
                if sent.ex.unique in self.arrived:
                    self._await(sent)
                    return
            try:
                msg = self.server.receive(deadline)
            except Closed:
                raise Crash(waiting[0].ex) from None
            if msg is None:
                raise Hang(waiting[0].ex)
            self._take(msg)

    def _await(self, sent: _Sent) -> None:
        if sent.compared:
            return
        unique = sent.ex.unique
        deadline = time.monotonic() + self.timeout
        while unique not in self.arrived:
            try:
                msg = self.server.receive(deadline)
            except Closed:
                raise Crash(sent.ex) from None
            if msg is None:
                raise Hang(sent.ex)
            self._take(msg)
        raw = self.arrived.pop(unique)
        self.outstanding.pop(unique, None)
        sent.compared = True
        self._compare_ioctls(sent)
        self._compare_reply(sent, raw)

    def _take(self, msg: bytes) -> None:
        """One message from the server: a reply (kept until compared) or a notification."""
        self._drain_calls()
        if self.writer is not None:
            self.writer.reply(msg)
        _, unique = peek_reply(msg)
        if unique == 0:
            self.notifications.append((self.last_index, msg))
            return
        sent = self.sent.get(unique)
        if sent is None or sent.compared or unique in self.arrived:
            self._extra_reply(sent, msg)
            return
        self.arrived[unique] = msg
        self.attr.reply(unique, msg)

    def _extra_reply(self, sent: _Sent | None, msg: bytes) -> None:
        _, unique = peek_reply(msg)
        where = sent.ex.index if sent is not None else self.last_index
        what = (f"a second reply to {sent.text()}" if sent is not None
                else f"a reply to unique {unique}, which no request sent has")
        self.diffs.append(Difference(where, "extra reply", what,
                                     "the server sent a reply the kernel would reject"))

    def _end(self) -> None:
        """End the server as the recorded session ended: after an unmount with ENODEV on
        its reads (no DESTROY: the kernel sends one only to fuseblk mounts, and the trace
        has it then), after a server that ended the session itself by waiting for it.
        A trace that does not say gets a DESTROY (unless it had one) and SIGTERM."""
        ending = self.script.ending
        if ending is not None and ending.unmounted:
            self.server.hang_up(self._take, self.timeout)
        elif ending is not None and ending.by_itself:
            self.server.wait_exit(self._take, self.timeout)
        elif self._destroy():
            self.server.stop(self._take)

    def _destroy(self) -> bool:
        """A DESTROY, when the trace has none; False when the server then closed."""
        if any(ex.opcode == Opcode.DESTROY for ex in self.script.exchanges):
            return True
        unique = max(ex.unique for ex in self.script.exchanges) + 2
        raw = bytes(FuseInHeader(opcode=Opcode.DESTROY, unique=unique))
        self._drain_calls()
        try:
            self.server.send(raw)
            if self.writer is not None:
                self.writer.request(raw)
            deadline = time.monotonic() + self.timeout
            while unique not in self.arrived:
                msg = self.server.receive(deadline)
                if msg is None:
                    break
                if peek_reply(msg)[1] == unique:
                    if self.writer is not None:
                        self.writer.reply(msg)
                    break
                self._take(msg)
        except Closed:
            return False  # ended its session on DESTROY: what DESTROY asks for
        return True

    def _compare_exit(self) -> str | None:
        """The server's exit against the recorded one (status, or the signal it died of);
        returns the error when it crashed where the recorded one did not."""
        ending, proc = self.script.ending, self.server.proc
        if ending is None or ending.exit is None or proc is None or proc.returncode is None:
            return None
        if proc.returncode == ending.exit:
            return None
        recorded, replayed = exit_text(ending.exit), exit_text(proc.returncode)
        how = f"the recorded session ended: {ending.reason}"
        self.diffs.append(Difference(
            ending.index, "server exit", how, f"the server {recorded} when recorded, "
            f"{replayed} in this replay", [FieldDiff("exit", recorded, replayed,
                                                    self.server.exit_note or "")]))
        if Outcome(End.KILLED, signal=-proc.returncode).crashed:
            return (f"the server crashed ({replayed}) as the session ended the way the "
                    f"recorded one did ({ending.reason}), after its last request")
        return None

    # --- comparing ------------------------------------------------------------------

    def _masked(self, opcode: int | None, path: str) -> bool:
        """Whether a field that differs is not compared; each mask that hides one counts."""
        why = self.masks.which(opcode, path)
        if why is None and self._hiding and hides(self._hiding, path):
            why = WHY
        if why is None:
            return False
        self.hidden[why] = self.hidden.get(why, 0) + 1
        return True

    def _compare_fast(self, ex: Exchange, raw: bytes) -> bool:
        """The reply compared as bytes (`fast`); False when it must go the full way."""
        reply, brief = ex.reply, ex.reply_brief
        if (ex.opcode in _FULL_WAY or self.written.nodes or ex.reply_true_len is not None
                or reply is None or brief is None or len(raw) != len(reply)):
            return False
        key = shape_key(ex.opcode, reply, brief)
        if key is None:
            return False
        found = self._shapes.get(key, False)
        if found is False:
            found = self._shapes[key] = shape(key, brief, self.masks.which)
        if found is None:
            return False
        for start, end in found.compared:
            if reply[start:end] != raw[start:end]:
                return False
        learned = []
        for at, fmt, kind in found.ids:
            a, b = fmt.unpack_from(reply, at)[0], fmt.unpack_from(raw, at)[0]
            table = self.tr.nodes if kind == NODE else self.tr.fhs
            if a in table.fixed or b in table.fixed or (kind == NODE and not (a and b)):
                if a != b:
                    return False
                continue
            if table.forward.get(a, b) != b or table.backward.get(b, a) != a:
                return False  # a translation problem: said the full way
            learned.append((kind, a, b))
        self.counts.replies += 1
        self.rep.pending.pop(ex.unique, None)
        for kind, a, b in learned:
            self.tr.learn(kind, a, b)
            self.displaced.pop((kind, a), None)
        for start, end, why in found.masked:
            if reply[start:end] != raw[start:end]:
                self.hidden[why] = self.hidden.get(why, 0) + 1
        return True

    def _compare_reply(self, sent: _Sent, raw: bytes) -> None:
        ex = sent.ex
        assert ex.reply is not None and ex.reply_index is not None
        if self._compare_fast(ex, raw):
            return
        self.counts.replies += 1
        rec_brief = ex.reply_brief
        assert rec_brief is not None
        self._comparing = ex.unique
        rep_brief = self.rep.feed_reply(raw).brief
        if ex.opcode == Opcode.INIT:
            ctx = self.rep.ctx
            self.stack_depth = negotiated_depth(ctx.dialect, ctx.flags,
                                                rep_brief.get("max_stack_depth") or 0)
        rv = reply_view(ex.reply, rec_brief, ex.reply_true_len)
        pv = reply_view(raw, rep_brief)
        if rv.error == 0 and ex.opcode in _OPENS:
            self.written.opened(ex.opcode, ex.raw, ex.reply, sent.view.brief.nodeid,
                                self.rec.ctx.dialect is Dialect.ANDROID)
        self._hiding = self.written.prefixes(ex.opcode, sent.view.brief.nodeid, ex.reply, [
            (path[:-len(".entry_out.nodeid")], value) for path, value, _, _ in rv.tail
            if path.endswith(".entry_out.nodeid")])
        fields = self._compare_views(ex.opcode, rv, pv, sent.fh)
        self._hiding = ()
        if not fields:
            return
        if rv.error != pv.error:
            summary = f"error {_errno_text(rv.error)} recorded, {_errno_text(pv.error)} replayed"
        else:
            names = ", ".join(f.path for f in fields[:3]) + (" …" if len(fields) > 3 else "")
            summary = f"the reply differs in {names}"
        self.diffs.append(Difference(ex.reply_index, "reply", sent.text(), summary, fields,
                                     _shown(rv.items()), _shown(pv.items())))
        self._event("replay_difference", record=ex.reply_index, summary=summary)

    def _compare_views(self, op: int, rv: ReplyView, pv: ReplyView, dir_fh: int) -> list[FieldDiff]:
        diffs: list[FieldDiff] = []
        if rv.error != pv.error and not self._masked(op, "error"):
            diffs.append(FieldDiff("error", _errno_text(rv.error), _errno_text(pv.error)))
        same = len(rv.layers) == len(pv.layers) and all(
            a[0] is b[0] for a, b in zip(rv.layers, pv.layers))
        if not same:
            self._compare_items(op, rv.items()[1:], pv.items()[1:], rv.cut, dir_fh, diffs)
            return diffs
        for (spec, a), (_, b) in zip(rv.layers, pv.layers):
            fmts = spec.comp.formatters
            kinds = spec.kinds_for(op, a)
            for i in spec.special:
                if kinds[i] != PLAIN:
                    self._learn(op, spec.paths[i], kinds[i], a[i], b[i], dir_fh, fmts[i], diffs)
            if a != b:
                for i, (x, y) in enumerate(zip(a, b)):
                    if x != y and kinds[i] == PLAIN and not self._masked(op, spec.paths[i]):
                        diffs.append(FieldDiff(spec.paths[i], show(x, fmts[i]), show(y, fmts[i])))
        if op in DIR_READS and not self.strict_order:
            self._compare_listing(op, rv.tail, pv.tail, rv.cut, dir_fh, diffs)
        else:
            self._compare_items(op, rv.tail, pv.tail, rv.cut, dir_fh, diffs)
        return diffs

    def _compare_listing(self, op: int, rec: list[Item], rep: list[Item], cut: bool, dir_fh: int,
                         diffs: list[FieldDiff]) -> None:
        """Directory entries paired by name, not position (POSIX fixes no order): each pair's
        fields compared and its node id and offset learned, an entry on one side only named
        once, and a different order said once, as `order`."""
        mine, rest = entries(rec)
        theirs, rest2 = entries(rep)
        waiting: dict[bytes, list[Entry]] = {}
        for entry in theirs:
            waiting.setdefault(entry.name, []).append(entry)
        order: list[int] = []  # replayed positions of the recorded entries, in recorded order
        offsets: list[tuple[int, int, int]] = []
        for entry in mine:
            found = waiting.get(entry.name)
            if not found:
                if not self._masked(op, entry.prefix + ".name"):
                    diffs.append(FieldDiff(entry.prefix + ".name", show(entry.name, None), "-",
                                           "the replayed listing has no entry of this name"))
                continue
            other = found.pop(0)
            order.append(other.position)
            offsets.append((entry.offset, other.position, other.offset))
            self._compare_items(op, entry.fields(), other.relabelled(entry.prefix), False,
                                dir_fh, diffs)
        self.tr.learn_listing(dir_fh, offsets, len(theirs))
        for found in waiting.values():
            for other in found:
                if cut and other.position >= len(mine):
                    continue  # past where the snap length cut the recorded listing
                if not self._masked(op, other.prefix + ".name"):
                    diffs.append(FieldDiff(other.prefix + ".name", "-", show(other.name, None),
                                           "the recorded listing has no entry of this name"))
        if order != sorted(order) and not self._masked(op, "order"):
            by_position = sorted(theirs, key=lambda e: e.position)
            diffs.append(FieldDiff("order", names_text([e.name for e in mine]),
                                   names_text([e.name for e in by_position]),
                                   "the same entries in another order (--strict-order compares "
                                   "positions)"))
        if not cut:
            self._compare_items(op, rest, rest2, False, dir_fh, diffs)

    def _compare_items(self, op: int, rec: list[Item], rep: list[Item], cut: bool, dir_fh: int,
                       diffs: list[FieldDiff]) -> None:
        if len(rec) == len(rep) and all(a[0] == b[0] for a, b in zip(rec, rep)):
            pairs: list[tuple[str, Item | None, Item | None]] = [
                (a[0], a, b) for a, b in zip(rec, rep)]
        else:
            mine, theirs = {i[0]: i for i in rec}, {i[0]: i for i in rep}
            paths = list(mine) + [p for p in theirs if p not in mine]
            pairs = [(p, mine.get(p), theirs.get(p)) for p in paths]
        for path, a, b in pairs:
            if a is None or b is None:
                if not self._masked(op, path):
                    diffs.append(FieldDiff(path, show(a[1], a[3]) if a else "-",
                                           show(b[1], b[3]) if b else "-"))
                continue
            if a[2] != PLAIN:
                self._learn(op, path, a[2], a[1], b[1], dir_fh, a[3], diffs)
                continue
            x, y = a[1], b[1]
            if path == "data":
                if self.reads_by_length and op == Opcode.READ:
                    continue
                if cut:
                    y = y[:len(x)]
            if x != y and not self._masked(op, path):
                note = _first_change(x, y) if isinstance(x, bytes) and isinstance(y, bytes) else ""
                diffs.append(FieldDiff(path, show(x, a[3]), show(y, b[3]), note))

    def _learn(self, op: int, path: str, kind: int, recorded: int, replayed: int, dir_fh: int,
               fmt: Any, diffs: list[FieldDiff]) -> None:
        if kind == IGNORED:
            return
        problem = self.tr.learn(kind, recorded, replayed, dir_fh)
        for table, which in ((self.tr.nodes, NODE), (self.tr.fhs, FH)):
            while table.displaced:
                self.displaced[(which, table.displaced.pop())] = self._comparing
        if kind in (NODE, FH):
            self.displaced.pop((kind, recorded), None)  # bound again
        if problem and not self._masked(op, path):
            diffs.append(FieldDiff(path, show(recorded, fmt), show(replayed, fmt), problem))

    # --- ioctls -------------------------------------------------------------------------

    def _compare_ioctls(self, sent: _Sent) -> None:
        self._drain_calls()
        mine = [self.calls[t] for t in self.attr.owned.pop(sent.ex.unique, [])]
        if mine or sent.ex.ioctls:  # (the request's text is costly: only when needed)
            self._pair_ioctls(sent.ex.ioctls, mine, sent.text(), sent.ex.index)

    def _pair_ioctls(self, recorded: list[IoctlRecord], replayed: list[IoctlCall], during: str,
                     where: int) -> None:
        cmds = list(dict.fromkeys([c.cmd for c in recorded] + [c.cmd for c in replayed]))
        for cmd in cmds:
            rec = [c for c in recorded if c.cmd == cmd]
            rep = [c for c in replayed if c.cmd == cmd]
            for a, b in zip(rec, rep):
                self._compare_call(a, b, during)
            for a in rec[len(rep):]:
                self.counts.ioctls += 1
                self.diffs.append(Difference(
                    a.index, "missing ioctl", self._ioctl_text(a.cmd, a.arg, a.result, a.errno),
                    f"the server did not make this ioctl while handling {during}",
                    recorded=self._ioctl_fields(a.cmd, a.arg, a.result, a.errno)))
            for b in rep[len(rec):]:
                self.diffs.append(Difference(
                    where, "extra ioctl", self._ioctl_text(b.cmd, b.arg, b.result, b.errno),
                    f"the server made this ioctl while handling {during}; the recording has no such ioctl",
                    replayed=self._ioctl_fields(b.cmd, b.arg, b.result, b.errno)))

    def _compare_call(self, rec: IoctlRecord, rep: IoctlCall, during: str) -> None:
        self.counts.ioctls += 1
        fields: list[FieldDiff] = []
        if rec.errno != rep.errno:
            fields.append(FieldDiff("errno", _errno_text(-rec.errno), _errno_text(-rep.errno)))
        elif rec.cmd in _OPEN_IOCTLS and rec.errno == 0:
            problem = self.tr.backing.learn(rec.result, rep.result)
            if problem:
                fields.append(FieldDiff("result", str(rec.result), str(rep.result), problem))
        dialect = self.rec.ctx.dialect
        mine, theirs = (ioctl_arg_fields(rec.cmd, rec.arg, dialect),
                        ioctl_arg_fields(rep.cmd, rep.arg, dialect))
        if rec.cmd == DevIoctl.BACKING_CLOSE and "backing_id" in mine and "backing_id" in theirs:
            rec_id, rep_id = mine["backing_id"], theirs["backing_id"]
            expected = (self.tr.backing_closed(rec_id) if rec.errno == 0
                        else self.tr.backing.forward.get(rec_id))
            if expected != rep_id:
                fields.append(FieldDiff("backing_id", str(rec_id), str(rep_id),
                                        f"recorded backing id {rec_id} is {expected} in this replay"))
        if rec.cmd == DevIoctl.BACKING_OPEN and mine.get("flags") != theirs.get("flags"):
            fields.append(FieldDiff("flags", str(mine.get("flags")), str(theirs.get("flags"))))
        if fields:
            self.diffs.append(Difference(
                rec.index, "ioctl", self._ioctl_text(rec.cmd, rec.arg, rec.result, rec.errno),
                f"made while handling {during}, it differs", fields,
                self._ioctl_fields(rec.cmd, rec.arg, rec.result, rec.errno),
                self._ioctl_fields(rep.cmd, rep.arg, rep.result, rep.errno)))

    def _ioctl_text(self, cmd: int, arg: bytes, result: int, err: int) -> str:
        return self.rec.feed_ioctl(cmd, arg, result, err).text

    def _ioctl_fields(self, cmd: int, arg: bytes, result: int, err: int) -> list[tuple[str, str]]:
        call = self.rec.feed_ioctl(cmd, arg, result, err)
        return ([("ioctl", call.name)] + [(k, str(v)) for k, v in call.fields.items()]
                + [("result", str(result)), ("errno", _errno_text(-err))])

    # --- after the conversation --------------------------------------------------------

    def _sweep(self) -> None:
        """What is compared once everything ran: ioctls of requests that got no reply,
        those made before the first request, replies nothing asked for, notifications."""
        self._drain_calls()
        self.attr.finish()
        for sent in self.sent.values():
            if not sent.compared:
                self._compare_ioctls(sent)
        startup = [self.calls[t] for t in self.attr.owned.pop(None, [])]
        self._pair_ioctls(self.script.startup_ioctls, startup, "start-up", 0)
        late = 0
        for unique in sorted(self.arrived):
            sent = self.sent[unique]
            if sent.ex.opcode in UNPAIRED:
                self.diffs.append(Difference(sent.ex.index, "extra reply", sent.text(),
                                             "the server answered a request that gets no reply"))
            else:
                late += 1
        if late:
            self.counts.extra["replies_the_recording_lacks"] = late
        self._match_notifications()

    def _notification_key(self, raw: bytes, recorded: bool) -> tuple[Any, ...]:
        view = reply_view(raw, brief_reply(raw, DEFAULT_CONTEXT))
        op = notify_key(view.error)
        parts = []
        for path, value, kind, _ in view.items()[1:]:
            if kind == IGNORED or self.masks.masked(op, path):
                continue
            if kind == NODE and not recorded:
                value = self.tr.nodes.backward.get(value, value)
            parts.append((path, value))
        return (view.error, tuple(parts))

    def _match_notifications(self) -> None:
        self.counts.notifications = len(self.script.notifications)
        waiting: dict[tuple[Any, ...], list[tuple[int, bytes]]] = {}
        for after, raw in self.notifications:
            waiting.setdefault(self._notification_key(raw, False), []).append((after, raw))
        for index, raw in self.script.notifications:
            found = waiting.get(self._notification_key(raw, True))
            if found:
                found.pop(0)
                continue
            view = reply_view(raw, brief_reply(raw, DEFAULT_CONTEXT))
            self.diffs.append(Difference(index, "missing notification", line(view.brief),
                                         "the server did not send this notification",
                                         recorded=_shown(view.items())))
        for left in waiting.values():
            for after, raw in left:
                view = reply_view(raw, brief_reply(raw, DEFAULT_CONTEXT))
                self.diffs.append(Difference(
                    after, "extra notification", line(view.brief),
                    "the server sent a notification the recording does not have (it arrived "
                    "after this record's request)", replayed=_shown(view.items())))
