"""The C loops of `inspector/lifecycles/_pass.c` against the Python ones: the same
lifecycles, events, anomalies and verdicts, and the same `stats` figures, on synthetic
sessions and on hostile ones (duplicate and stray replies, rejected replies, interrupts,
GETATTR with and without a handle, short messages, unknown opcodes, resent uniques, enough
entry replies to trim the table of recent ones). Without the extension the Python passes
run alone (test_lifecycles.py and test_check.py cover them); these tests need both."""

from __future__ import annotations

import errno
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from c_extensions import Taken, c_extension

from dissectors.constants import FOPEN_PASSTHROUGH, FUSE_UNIQUE_RESEND, Opcode
from dissectors.ids import field_offsets
from dissectors.ioctls import DevIoctl, FuseBackingMap
from dissectors.structs import (FuseAttr, FuseDirent, FuseDirentplus, FuseEntryOut, FuseForgetIn,
                                FuseGetattrIn, FuseInHeader, FuseInitIn, FuseInitOut,
                                FuseInterruptIn, FuseName, FuseOpenIn, FuseOpenOut,
                                FuseOutHeader, FuseReadIn, FuseReleaseIn)
from inspector.lifecycles import Analysis, analysis
from inspector.reports import stats
from traces import TraceWriter
from traces.testing import synthetic_trace

c_extension("inspector.lifecycles._pass")

_IN_UNIQUE = field_offsets(FuseInHeader)["unique"][0]
_OUT_UNIQUE = field_offsets(FuseOutHeader)["unique"][0]
_U64 = struct.Struct("<Q")


def both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Analysis, Analysis]:
    """(C pass, Python pass) of one trace; the C loop must have taken records itself."""
    run = Taken(analysis.fast_run, lambda args, taken: taken)
    with monkeypatch.context() as m:
        m.setattr(analysis, "fast_run", run)
        fast = analysis.analyse(path)
    assert run.total > 0, "the C pass took no record: Python was compared with itself"
    with monkeypatch.context() as m:
        m.setattr(analysis, "fast_run", None)
        slow = analysis.analyse(path)
    return fast, slow


def everything(a: Analysis) -> list[Any]:
    out: list[Any] = [a.tail, a.ended, a.end_reason, a.records, a.dialect, a.init, a.anomalies]
    for kind in ("backing", "fh", "node"):
        out.append([(lc.kind, lc.key, lc.generation, lc.events, lc.state, lc.verdict,
                     lc.anomalies, lc.count, lc.label) for lc in a.lifecycles(kind)])
    return out


def figures(path: Path) -> list[Any]:
    ops, totals = stats.collect(str(path))
    return [totals, [(name, vars(st), list(st.errors)) for name, st in ops.items()]]


def assert_same(path: Path, monkeypatch: pytest.MonkeyPatch) -> Analysis:
    fast, slow = both(path, monkeypatch)
    assert everything(fast) == everything(slow)
    tally = Taken(stats.tally, lambda args, result: sum(st[0] for st in result[0].values()))
    with monkeypatch.context() as m:
        m.setattr(stats, "tally", tally)
        quick = figures(path)
    assert tally.total > 0, "the C tally counted no request: Python was compared with itself"
    with monkeypatch.context() as m:
        m.setattr(stats, "tally", None)
        assert quick == figures(path)
    return fast


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_synthetic_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 30_000, seed=seed)
    a = assert_same(path, monkeypatch)
    assert a.lifecycles("node") and a.lifecycles("fh") and a.lifecycles("backing")


def test_cut_synthetic_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 5_000, seed=3)
    with open(path, "r+b") as f:  # cut in the middle of a record: no session end either
        f.truncate(path.stat().st_size * 2 // 3 + 5)
    a = assert_same(path, monkeypatch)
    assert a.tail and not a.ended and any(x.code == "open-at-end" for x in a.anomalies)


class Hostile:
    """A random session that breaks the rules the pass checks, record by record."""

    def __init__(self, path: Path, seed: int) -> None:
        self.w = TraceWriter(path, {"source": "test"})
        self.rng = random.Random(seed)
        self.unique = 0
        self.ts = 1000
        self.waiting: list[tuple[int, int]] = []  # (unique, opcode)
        self.handles: list[int] = []
        self.nodes = [1]
        attr = FuseAttr(mode=0o100644)
        self.entry = bytes(FuseOutHeader() / FuseEntryOut(nodeid=0, attr=attr))
        self.dirent = FuseDirentplus(entry_out=FuseEntryOut(nodeid=9, attr=attr),
                                     dirent=FuseDirent(ino=9, namelen=1, name=b"d"))

    def tick(self) -> int:
        self.ts += self.rng.randrange(1, 5000)
        return self.ts

    def request(self, opcode: int, body: Any = b"", nodeid: int = 1, resend: bool = False,
                cut: int | None = None) -> int:
        self.unique += 2
        unique = self.unique | (FUSE_UNIQUE_RESEND if resend else 0)
        raw = bytes(FuseInHeader(opcode=opcode, unique=unique, nodeid=nodeid) / body)
        self.w.request(raw[:cut], ts=self.tick())
        self.waiting.append((unique, opcode))
        return unique

    def reply(self, unique: int, body: Any = b"", error: int = 0, **meta: Any) -> None:
        raw = bytes(FuseOutHeader(unique=unique, error=error) / body)
        self.w.reply(raw, ts=self.tick(), **meta)

    def entry_for(self, node: int) -> bytes:
        raw = bytearray(self.entry)
        _U64.pack_into(raw, len(FuseOutHeader()), node)
        return bytes(raw)

    def answer(self, unique: int, opcode: int) -> None:
        r = self.rng.random()
        if r < 0.08:
            self.reply(unique, error=-errno.ENOENT)
        elif r < 0.12:
            self.reply(unique, write_errno=self.rng.choice((errno.ENOENT, errno.EINVAL)))
        elif opcode in (Opcode.LOOKUP, Opcode.MKDIR):
            node = self.rng.choice(self.nodes + [self.rng.randrange(2, 60)])
            self.nodes.append(node)
            self.reply(unique, self.entry_for(node))
        elif opcode == Opcode.OPEN:
            fh = self.rng.randrange(1, 40)
            self.handles.append(fh)
            bid = self.rng.choice((0, 0, 1, 2, 3))
            self.reply(unique, FuseOpenOut(fh=fh, open_flags=FOPEN_PASSTHROUGH if bid else 0,
                                           backing_id=bid))
        elif opcode == Opcode.READDIRPLUS:
            self.reply(unique, bytes(self.dirent))
        else:
            self.reply(unique)
        if self.rng.random() < 0.03:  # the recorder learnt later that the kernel refused it
            self.w.event("reply_rejected", ts=self.tick(), unique=unique, opcode=opcode,
                         write_errno=self.rng.choice((errno.ENOENT, errno.ENODEV)))

    def step(self) -> None:
        rng = self.rng
        r = rng.random()
        node = rng.choice(self.nodes)
        fh = rng.choice(self.handles) if self.handles and rng.random() < 0.9 else 77
        if r < 0.15:
            self.request(Opcode.LOOKUP, FuseName(name=b"n%d" % rng.randrange(9)))
        elif r < 0.25:
            flags = 1 if rng.random() < 0.3 else 0  # FUSE_GETATTR_FH
            self.request(Opcode.GETATTR, FuseGetattrIn(getattr_flags=flags, fh=fh), node)
        elif r < 0.35:
            self.request(Opcode.READ, FuseReadIn(fh=fh), node)
        elif r < 0.40:
            self.request(Opcode.OPEN, FuseOpenIn(), node)
        elif r < 0.44:
            self.request(Opcode.RELEASE, FuseReleaseIn(fh=fh), node)
        elif r < 0.47:
            self.request(Opcode.READDIRPLUS, FuseReadIn(fh=fh), node)
        elif r < 0.50:
            self.request(Opcode.FORGET, FuseForgetIn(nlookup=rng.randrange(1, 3)), node)
            self.waiting.pop()
        elif r < 0.53 and self.waiting:
            self.request(Opcode.INTERRUPT, FuseInterruptIn(unique=rng.choice(self.waiting)[0]))
            self.waiting.pop()
        elif r < 0.56:
            self.request(rng.choice((99, Opcode.STATFS, Opcode.MKDIR)), resend=rng.random() < 0.5)
        elif r < 0.58:
            self.request(Opcode.READ, FuseReadIn(fh=fh), node, cut=rng.choice((20, 44)))
        elif r < 0.60:
            self.reply(rng.randrange(1, self.unique + 40))  # duplicate or stray
        elif r < 0.62:
            self.w.reply(bytes(FuseOutHeader(unique=0, error=1)), ts=self.tick())  # a notify
        elif r < 0.64:
            self.w.ioctl(cmd=DevIoctl.BACKING_OPEN, arg=bytes(FuseBackingMap(fd=7)),
                         result=rng.randrange(1, 4), errno=0, ts=self.tick())
        elif r < 0.66:
            self.w.ioctl(cmd=DevIoctl.BACKING_CLOSE, arg=struct.pack("<I", rng.randrange(1, 4)),
                         result=0, errno=0, ts=self.tick())
        while self.waiting and rng.random() < 0.6:  # some replies out of order
            unique, opcode = self.waiting.pop(rng.randrange(len(self.waiting)))
            self.answer(unique, opcode)

    def write(self, steps: int, end: str | None) -> None:
        self.request(Opcode.INIT, FuseInitIn(flags=0x5FD73FFFFFB & 0xFFFFFFFF), 0)
        self.waiting.pop()
        self.reply(self.unique, FuseInitOut(max_write=1 << 20, max_stack_depth=1))
        for _ in range(steps):
            self.step()
        if end is not None:
            self.w.event("session_end", ts=self.tick(), reason=end)
        self.w.close()


@pytest.mark.parametrize("seed,end", [(1, "unmounted"), (2, None), (3, "crashed"), (4, "unmounted")])
def test_hostile_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int,
                          end: str | None) -> None:
    path = tmp_path / "h.fzt"
    Hostile(path, seed).write(3000, end)
    a = assert_same(path, monkeypatch)
    found = {x.code for x in a.anomalies}
    assert {"reply-duplicate", "reply-rejected", "fh-unknown", "node-over-forgotten"} <= found
    totals, ops = figures(path)
    assert totals["notifications"] and any(errors for _, _, errors in ops)


def test_recent_replies_trimmed_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 8192 entry replies the pass forgets all but the latest 4096: a late
    `reply_rejected` finds its reply (and takes the lookup back) only among those."""
    path = tmp_path / "r.fzt"
    w = TraceWriter(path, {"source": "test"})
    init = bytes(FuseInHeader(opcode=Opcode.INIT, unique=2, nodeid=0) / FuseInitIn())
    w.request(init, ts=1)
    w.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut(max_write=1 << 20)), ts=2)
    lookup = bytearray(bytes(FuseInHeader(opcode=Opcode.LOOKUP, nodeid=1) / FuseName(name=b"f")))
    entry = bytearray(bytes(FuseOutHeader() / FuseEntryOut(nodeid=5, attr=FuseAttr())))
    uniques = range(4, 4 + 2 * 9000, 2)
    for ts, unique in enumerate(uniques, 3):
        _U64.pack_into(lookup, _IN_UNIQUE, unique)
        _U64.pack_into(entry, _OUT_UNIQUE, unique)
        w.request(bytes(lookup), ts=ts)
        w.reply(bytes(entry), ts=ts)
    # trimmed at the 8193rd to the latest 4096 (the 4098th on), 807 more since
    for unique in (uniques[10], uniques[4096], uniques[4097], uniques[-10]):
        w.event("reply_rejected", ts=20_000, unique=unique, opcode=Opcode.LOOKUP,
                write_errno=errno.EINVAL)
    w.event("session_end", ts=20_001, reason="unmounted")
    w.close()
    a = assert_same(path, monkeypatch)
    [node] = a.find("node", 5)
    assert [e.what for e in node.events].count("rejected reply") == 2
