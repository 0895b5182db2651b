"""A trace played once to a fresh server, judged by what the kernel would make of it.

Requests go out in the trace's order and each reply is awaited where the trace has it
(so recorded overlap and INTERRUPTs are reproduced as recorded); requests the trace has
no reply for are awaited at the end. Unlike `fusetrace replay`, replies are not compared
with the recorded ones: the question is only whether the server dies, hangs or sends
what the kernel refuses (`Outcome`). This is how `reduce` tests its candidates and how
`fuzz` confirms and reproduces a finding.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

from dissectors.constants import Opcode
from traces import Kind, Record, TraceReader

from .layout import IN_HEADER, reply_header
from .live import Failure, LiveServer, StartError
from .outcome import Outcome, Verdict

__all__ = ["StartError", "feed", "play"]


def play(trace: str | os.PathLike[str], server: Sequence[str], *, timeout: float = 5.0,
         fresh: str | None = None, mountpoint: str | None = None) -> Outcome | None:
    """How the server fails on `trace` (None: it does not). `StartError` when it cannot
    be started or does not answer INIT; `TraceReadError` for a bad trace."""
    with TraceReader(trace) as reader:
        records = list(reader)
    route = next((r.meta.get("route") for r in records if r.event == "connected"), None)
    requests = [r for r in records if r.kind is Kind.REQUEST and r.raw
                and len(r.raw) >= IN_HEADER.size]
    init = next((r for r in requests if IN_HEADER.unpack_from(r.raw)[1] == Opcode.INIT), None)
    if init is None:
        raise StartError(f"{os.fspath(trace)}: no INIT request to start the server with")
    with tempfile.TemporaryDirectory(prefix="fusetrace-play-") as work:
        live = LiveServer(server, mountpoint=mountpoint, route=route, fresh=fresh, workdir=work)
        live.start(init.raw or b"", timeout)
        try:
            return feed(live, records, init.index, timeout)
        finally:
            live.stop()


def feed(live: LiveServer, records: list[Record], after: int, timeout: float,
         skip: frozenset[int] = frozenset()) -> Outcome | None:
    """Play the requests of `records` past record `after` (but those in `skip`) to a
    running server, learning the ids its replies hand out; how it failed, or None."""
    sent: dict[int, tuple[int, int, int]] = {}  # recorded unique → (live unique, opcode, record)
    current = after
    try:
        for rec in records:
            raw = rec.raw or b""
            if rec.index <= after or rec.index in skip:
                continue
            if rec.kind is Kind.REQUEST and len(raw) >= IN_HEADER.size:
                _, opcode, unique, _, *_ = IN_HEADER.unpack_from(raw)
                current = rec.index
                live_unique = live.send(live.translate(opcode, raw), unique)
                sent[unique] = (live_unique, opcode, rec.index)
            elif rec.kind is Kind.REPLY and len(raw) >= 16:
                unique = reply_header(raw)[2]
                got = sent.pop(unique, None)
                if got is None or got[1] == Opcode.INTERRUPT:
                    continue
                live_unique, opcode, current = got
                live.learn(opcode, raw, live.reply(live_unique, timeout))
        for _, (live_unique, opcode, index) in list(sent.items()):
            current = index
            if live_unique in live.outstanding():
                live.reply(live_unique, timeout)
    except Failure as failure:
        o = failure.outcome
        waiting = set(live.outstanding())  # a death is the oldest waiting request's
        oldest = next((index for live_unique, _, index in sent.values()
                       if live_unique in waiting), None)
        if o.verdict in (Verdict.EXITED, Verdict.KILLED) and oldest is not None:
            current = oldest
        return Outcome(o.verdict, o.opcode, o.status, o.refusal, o.detail, current)
    return None
