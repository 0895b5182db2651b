"""The lifecycle pass on hand-built sessions: the anomalies no real server in the tests
produces (duplicate replies, over-forgetting, Android ids, rejected replies, cut traces),
each pinned to its records. Live recordings of real misbehaviour are in test_check.py."""

from __future__ import annotations

import errno
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.packet import Packet

from dissectors.constants import (FOPEN_DIRECT_IO, FOPEN_PASSTHROUGH, FUSE_INIT_EXT,
                                  FUSE_PASSTHROUGH, FUSE_PASSTHROUGH_ANDROID_EXT,
                                  FUSE_WRITEBACK_CACHE, Opcode)
from dissectors.ids import FUSE_GETATTR_FH
from dissectors.ioctls import DevIoctl, FuseBackingMap, FusePassthroughOut
from dissectors.structs import (FuseAttr, FuseBatchForgetIn, FuseEntryOut, FuseForgetIn,
                                FuseForgetList, FuseForgetOne, FuseInHeader, FuseInitIn,
                                FuseInitOut, FuseInterruptIn, FuseName, FuseOpenIn, FuseOpenOut,
                                FuseOpenOutAndroid, FuseOutHeader, FuseReadIn, FuseReleaseIn,
                                FuseStatxIn, FuseMknodIn, FuseMknodInCompat, FuseCreateIn,
                                FuseCreateInCompat)
from inspector.lifecycles import Analysis, analyse
from inspector.lifecycles.wire import direntplus_nodeids, entry_name, request_fhs
from traces import TraceWriter

OFFERED = 0x5FD73FFFFFB  # what Linux 6.18 offers in INIT


class Session:
    """Writes a FUSE conversation record by record; methods return record numbers."""

    def __init__(self, path: Path) -> None:
        self.writer = TraceWriter(path, {"source": "test"})
        self.count = 0
        self.ts = 1000
        self.unique = 0

    def _next(self) -> int:
        self.count += 1
        self.ts += 1000
        return self.count - 1

    def request(self, opcode: int, body: Packet | bytes = b"", nodeid: int = 1) -> tuple[int, int]:
        """(record number, unique)"""
        self.unique += 2
        raw = bytes(FuseInHeader(opcode=opcode, unique=self.unique, nodeid=nodeid) / body)
        self.writer.request(raw, ts=self.ts)
        return self._next(), self.unique

    def reply(self, unique: int, body: Packet | bytes = b"", error: int = 0, **meta: Any) -> int:
        self.writer.reply(bytes(FuseOutHeader(unique=unique, error=error) / body), ts=self.ts,
                          **meta)
        return self._next()

    def ioctl(self, cmd: int, arg: bytes, result: int, err: int = 0) -> int:
        self.writer.ioctl(cmd=cmd, arg=arg, result=result, errno=err, ts=self.ts, path="/src/f")
        return self._next()

    def event(self, name: str, **data: Any) -> int:
        self.writer.event(name, ts=self.ts, **data)
        return self._next()

    def init(self, flags: int = FUSE_INIT_EXT | FUSE_PASSTHROUGH, depth: int = 1,
             offered: int = OFFERED) -> int:
        _, unique = self.request(Opcode.INIT, FuseInitIn(flags=offered & 0xFFFFFFFF,
                                                         flags2=offered >> 32), nodeid=0)
        return self.reply(unique, FuseInitOut(flags=flags & 0xFFFFFFFF, flags2=flags >> 32,
                                              max_write=1 << 20, max_stack_depth=depth))

    def lookup(self, name: bytes, nodeid: int) -> int:
        _, unique = self.request(Opcode.LOOKUP, FuseName(name=name))
        return self.reply(unique, FuseEntryOut(nodeid=nodeid, attr=FuseAttr(mode=0o100644)))

    def backing_open(self, result: int, err: int = 0) -> int:
        return self.ioctl(DevIoctl.BACKING_OPEN, bytes(FuseBackingMap(fd=7)),
                          -1 if err else result, err)

    def backing_close(self, bid: int, err: int = 0) -> int:
        return self.ioctl(DevIoctl.BACKING_CLOSE, struct.pack("<I", bid), -1 if err else 0, err)

    def open(self, nodeid: int, fh: int, flags: int = FOPEN_PASSTHROUGH, bid: int = 0,
             android: bool = False) -> tuple[int, int]:
        """(OPEN request, reply) record numbers."""
        asked, unique = self.request(Opcode.OPEN, FuseOpenIn(flags=0), nodeid)
        out = (FuseOpenOutAndroid(fh=fh, open_flags=flags, passthrough_fh=bid) if android
               else FuseOpenOut(fh=fh, open_flags=flags, backing_id=bid))
        return asked, self.reply(unique, out)

    def release(self, nodeid: int, fh: int) -> int:
        i, unique = self.request(Opcode.RELEASE, FuseReleaseIn(fh=fh), nodeid)
        self.reply(unique)
        return i

    def end(self, reason: str = "unmounted") -> Analysis:
        self.event("session_end", reason=reason)
        return self.analyse()

    def analyse(self) -> Analysis:
        self.writer.close()
        return analyse(self.writer.path)


@pytest.fixture
def s(tmp_path: Path) -> Session:
    return Session(tmp_path / "t.fzt")


def codes(a: Analysis) -> dict[str, tuple[int, ...]]:
    """Anomaly code → the records of its first case."""
    found: dict[str, tuple[int, ...]] = {}
    for x in a.anomalies:
        found.setdefault(x.code, x.records)
    return found


def test_clean_passthrough_lifecycle(s: Session) -> None:
    s.init()
    s.lookup(b"f", 2)
    opened = s.backing_open(1)
    asked, reply = s.open(2, 0x10, bid=1)
    released = s.release(2, 0x10)
    closed = s.backing_close(1)
    a = s.end()
    assert a.anomalies == [] and a.clean_end
    [b] = a.find("backing", 1)
    assert b.records == [opened, reply, released, closed] and b.verdict == "closed properly"
    assert [e.what for e in b.events] == ["BACKING_OPEN", "OPEN reply", "RELEASE", "BACKING_CLOSE"]
    [fh] = a.find("fh", 0x10)
    assert fh.records == [reply, released] and fh.state == "released"
    [node] = a.find("node", 2)
    # at unmount the kernel drops node references with the connection, sending no FORGET
    assert node.label == "f" and node.count == 1 and node.verdict == "released by the unmount"
    assert node.events[-1].what == "unmount" and node.events[-1].index == s.count - 1
    assert a.subjects_of(reply) == [("backing", 1), ("fh", 0x10), ("request", 6)]
    [req] = a.find("request", 6)
    assert req.records == [asked, reply] and req.state == "answered"


def test_leak_after_unmount_but_only_a_note_in_a_cut_trace(s: Session) -> None:
    s.init()
    opened = s.backing_open(1)
    _, reply = s.open(2, 0x10, bid=1)
    s.release(2, 0x10)
    cut = s.analyse()
    assert codes(cut) == {"open-at-end": (opened, reply, reply + 1)}
    assert "the trace ends without the session's end" in cut.anomalies[0].message
    assert cut.find("backing", 1)[0].verdict == "still open at end of trace"


def test_leak_after_unmount(s: Session) -> None:
    s.init()
    opened = s.backing_open(1)
    a = s.end()
    assert codes(a) == {"backing-leak": (opened,)}
    assert a.find("backing", 1)[0].verdict == "leaked"


@pytest.mark.parametrize(("init", "code"), [
    ({"flags": FUSE_INIT_EXT}, "backing-eperm-not-negotiated"),
    ({"offered": OFFERED & ~FUSE_PASSTHROUGH, "flags": FUSE_INIT_EXT},
     "backing-eperm-not-offered"),
    ({"flags": FUSE_INIT_EXT | FUSE_PASSTHROUGH | FUSE_WRITEBACK_CACHE}, "backing-eperm-writeback"),
    ({"depth": 0}, "backing-eperm-stack-depth"),
    ({"depth": 3}, "backing-eperm-stack-depth"),
    ({}, "backing-eperm-no-cap"),
])
def test_eperm_causes_are_told_apart(s: Session, init: dict[str, int], code: str) -> None:
    init_reply = s.init(**init)
    failed = s.backing_open(0, errno.EPERM)
    found = codes(s.end())
    assert found.pop(code) == (init_reply, failed)
    assert set(found) <= {"init-passthrough-off"}


@pytest.mark.parametrize(("err", "says"), [(errno.ENOTTY, "older than 6.9"),
                                           (errno.EOPNOTSUPP, "CONFIG_FUSE_PASSTHROUGH")])
def test_a_kernel_without_passthrough_is_named(s: Session, err: int, says: str) -> None:
    s.init()
    failed = s.backing_open(0, err)
    a = s.end()
    assert codes(a) == {"backing-unsupported": (failed,)}
    assert says in a.anomalies[0].message


def test_statx_naming_a_handle_uses_it(s: Session) -> None:
    """STATX's fh is a handle only with FUSE_GETATTR_FH (dissectors.ids): with it an
    unknown one is flagged like any use, without it the field is nobody's."""
    s.init()
    s.request(Opcode.STATX, FuseStatxIn(getattr_flags=0, fh=0x77), nodeid=1)
    named, _ = s.request(Opcode.STATX, FuseStatxIn(getattr_flags=FUSE_GETATTR_FH, fh=0x66))
    assert codes(s.end()).get("fh-unknown") == (named,)


def test_ids_misused_in_open_replies(s: Session) -> None:
    s.init()
    s.backing_open(1)
    _, first = s.open(2, 0x10, bid=1)
    s.release(2, 0x10)
    s.backing_close(1)
    _, after_close = s.open(2, 0x11, bid=1)
    _, unknown = s.open(3, 0x12, bid=9)
    _, zero = s.open(3, 0x13, bid=0)
    _, no_flag = s.open(3, 0x14, flags=0, bid=1)
    s.backing_open(2)
    _, direct = s.open(4, 0x15, flags=FOPEN_PASSTHROUGH | FOPEN_DIRECT_IO, bid=2)
    for fh in range(0x11, 0x16):
        s.release(3, fh)
    twice = s.backing_close(1, errno.ENOENT)
    never = s.backing_close(7, errno.ENOENT)
    s.backing_close(2)
    found = codes(s.end())
    assert after_close in found.pop("backing-used-after-close")
    assert found.pop("backing-unknown-id") == (unknown,)
    assert found.pop("passthrough-zero-id") == (zero,)
    assert found.pop("passthrough-id-without-flag") == (no_flag,)
    assert found.pop("passthrough-direct-io") == (direct,)
    assert twice in found.pop("backing-close-twice")
    assert found.pop("backing-close-unknown") == (never,)
    assert found == {}


def test_conflicting_ids_and_close_in_flight(s: Session) -> None:
    s.init()
    one = s.backing_open(1)
    _, first = s.open(2, 0x10, bid=1)
    s.backing_open(2)
    _, second = s.open(2, 0x11, bid=2)  # node 2 is still open with id 1
    close_early = s.backing_close(2)  # right after the reply, before the kernel used 0x11
    s.release(2, 0x10)
    s.release(2, 0x11)
    s.backing_close(1)
    found = codes(s.end())
    assert found.pop("passthrough-conflicting-ids") == (one, second)
    assert found.pop("backing-close-in-flight") == (second, close_early)
    assert found == {}


def test_passthrough_without_negotiation(s: Session) -> None:
    init_reply = s.init(flags=FUSE_INIT_EXT)
    s.backing_open(1)  # recorded as succeeding: the anomaly is in the reply
    _, reply = s.open(2, 0x10, bid=1)
    found = codes(s.end())
    assert found["passthrough-not-negotiated"] == (init_reply, reply)


def test_android_ids_are_consumed_by_the_open(s: Session) -> None:
    s.init(flags=FUSE_INIT_EXT | FUSE_PASSTHROUGH_ANDROID_EXT,
           offered=OFFERED | FUSE_PASSTHROUGH_ANDROID_EXT)
    opened = s.ioctl(DevIoctl.PASSTHROUGH_OPEN_V1, bytes(FusePassthroughOut(fd=7)), 5)
    _, reply = s.open(2, 0x10, flags=0, bid=5, android=True)
    s.release(2, 0x10)
    leaked = s.ioctl(DevIoctl.PASSTHROUGH_OPEN_V1, bytes(FusePassthroughOut(fd=8)), 6)
    a = s.end()
    assert a.dialect.value == "android"
    [used] = a.find("backing", 5)
    assert used.records == [opened, reply] and used.state == "consumed"
    assert codes(a) == {"backing-leak": (leaked,)}
    assert "never consumed by an open reply" in a.anomalies[0].message


def test_requests_replies_and_nodes(s: Session) -> None:
    s.init()
    looked = s.lookup(b"a", 5)
    asked, unique = s.request(Opcode.GETATTR, nodeid=5)
    s.reply(unique)
    dup = s.reply(unique)
    stray = s.reply(999)
    forget, _ = s.request(Opcode.FORGET, FuseForgetIn(nlookup=2), nodeid=5)
    batch, _ = s.request(Opcode.BATCH_FORGET, FuseBatchForgetIn() / FuseForgetList(
        forgets=[FuseForgetOne(nodeid=7, nlookup=1)]), nodeid=0)
    hung, hung_unique = s.request(Opcode.READ, FuseReadIn(fh=0x10), nodeid=5)
    interrupt, _ = s.request(Opcode.INTERRUPT, FuseInterruptIn(unique=hung_unique), nodeid=0)
    a = s.end()
    found = codes(a)
    assert found.pop("reply-duplicate") == (dup,)
    assert found.pop("reply-unknown-unique") == (stray,)
    assert found.pop("node-over-forgotten") == (looked, forget)
    [never_looked_up] = a.find("node", 7)[0].anomalies  # forgotten, never looked up
    assert never_looked_up.records == (batch,)
    assert found.pop("fh-unknown") == (hung,)
    assert found.pop("request-unanswered") == (hung, interrupt)
    assert found == {}
    assert "interrupted at" in next(x.message for x in a.anomalies
                                    if x.code == "request-unanswered")
    [req] = a.find("request", hung_unique)
    assert [e.what for e in req.events] == ["READ", "INTERRUPT"] and req.state == "interrupted"


def test_rejected_replies(s: Session) -> None:
    s.init()
    _, unique = s.request(Opcode.OPEN, FuseOpenIn(), 2)
    reply = s.reply(unique, FuseOpenOut(fh=0x10))
    event = s.event("reply_rejected", unique=unique, opcode=Opcode.OPEN, write_errno=errno.EINVAL)
    _, unique = s.request(Opcode.GETATTR, nodeid=2)
    late = s.reply(unique, write_errno=errno.ENOENT)  # the bundled server's own --trace
    _, unique = s.request(Opcode.STATFS)
    s.reply(unique)
    s.event("reply_rejected", unique=unique, opcode=Opcode.STATFS, write_errno=errno.ENODEV)
    _, unique = s.request(Opcode.OPEN, FuseOpenIn(), 2)
    s.reply(unique, FuseOpenOut(fh=0x20))
    _, unique = s.request(Opcode.RELEASE, FuseReleaseIn(fh=0x20), 2)
    s.reply(unique)  # answered after the unmount: its request was dropped with the mount
    s.event("reply_rejected", unique=unique, opcode=Opcode.RELEASE, write_errno=errno.ENOENT,
            connection_gone=True)
    # a notification about an inode the kernel no longer caches: refused, and harmless
    s.event("reply_rejected", unique=0, opcode=None, write_errno=errno.ENOENT, notify_code=2)
    a = s.end()
    rejected = [(x.records, x.message.split(" with ")[1].split(":")[0]) for x in a.anomalies]
    assert rejected == [((reply - 1, reply, event), "EINVAL"), ((late - 1, late), "ENOENT")]
    [fh] = a.find("fh", 0x10)
    assert fh.state == "rejected"  # the kernel never had it open: no "never released"


def test_init_oddities(s: Session) -> None:
    _, unique = s.request(Opcode.INIT, FuseInitIn(flags=0x1, flags2=0), nodeid=0)
    odd = s.reply(unique, FuseInitOut(flags=0x1 | 0x10000, max_write=1024))
    found = codes(s.end())
    assert found == {"init-flags-not-offered": (0, odd), "init-max-write-small": (odd,)}


def test_init_failed_and_unanswered(tmp_path: Path) -> None:
    failed = Session(tmp_path / "a.fzt")
    _, unique = failed.request(Opcode.INIT, FuseInitIn(), nodeid=0)
    failed.reply(unique, error=-errno.EPROTO)
    assert codes(failed.end()) == {"init-failed": (0, 1)}
    silent = Session(tmp_path / "b.fzt")
    silent.request(Opcode.INIT, FuseInitIn(), nodeid=0)
    assert set(codes(silent.end())) == {"init-unanswered", "request-unanswered"}


def test_wire_offsets_match_the_dissectors() -> None:
    """The pass reads fields at fixed offsets: they must be where the Scapy classes put them."""
    raw = bytes(FuseInHeader(opcode=Opcode.READ, unique=2) / FuseReadIn(fh=0xABC))
    assert request_fhs(Opcode.READ, raw) == (0xABC,)
    raw = bytes(FuseInHeader(opcode=Opcode.RELEASE, unique=2) / FuseReleaseIn(fh=0xDEF))
    assert request_fhs(Opcode.RELEASE, raw) == (0xDEF,)
    assert request_fhs(Opcode.LOOKUP, bytes(FuseInHeader(opcode=Opcode.LOOKUP)
                                            / FuseName(name=b"x"))) == ()
    from dissectors.structs import FuseDirent, FuseDirentplus, FuseDirentplusList
    listing = bytes(FuseOutHeader(unique=2) / FuseDirentplusList(direntplus=[
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=9), dirent=FuseDirent(name=b"a")),
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=1), dirent=FuseDirent(name=b"..")),
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=0), dirent=FuseDirent(name=b"neg")),
        FuseDirentplus(entry_out=FuseEntryOut(nodeid=12), dirent=FuseDirent(name=b"longer-name")),
    ]))
    assert list(direntplus_nodeids(listing)) == [(9, b"a"), (12, b"longer-name")]


@pytest.mark.parametrize("opcode, new, old", [
    (Opcode.MKNOD, FuseMknodIn, FuseMknodInCompat), (Opcode.CREATE, FuseCreateIn, FuseCreateInCompat)])
def test_entry_names_at_the_negotiated_minors_layout(opcode: int, new: type, old: type) -> None:
    """Before 7.12 fuse_mknod_in and fuse_create_in were shorter: the name starts earlier."""
    for body, minor in ((new(), 45), (old(), 11)):
        raw = bytes(FuseInHeader(opcode=opcode, unique=2) / body / FuseName(name=b"file"))
        assert entry_name(opcode, raw, minor) == "file"
    assert entry_name(opcode, raw, 45) != "file"  # read at 7.45's offset, the name is missed


def test_follow_and_check_agree_on_nodes_after_a_clean_unmount(s: Session) -> None:
    """`check` finds nothing open after an unmount, and `follow --nodeid` says why: the
    kernel dropped the node's lookups with the connection (no FORGET is sent at unmount)."""
    from record_support import fusetrace

    s.init()
    s.lookup(b"f", 2)
    s.end()
    check = fusetrace("check", str(s.writer.path))
    assert check.returncode == 0, check.stdout + check.stderr
    follow = fusetrace("follow", "--nodeid", "2", str(s.writer.path))
    assert follow.returncode == 0, follow.stderr
    assert "verdict: released by the unmount (state: released at unmount)" in follow.stdout
    assert "still open" not in follow.stdout
    cut = Session(Path(s.writer.path).parent / "cut.fzt")
    cut.init()
    cut.lookup(b"f", 2)
    cut.writer.close()
    follow = fusetrace("follow", "--nodeid", "2", str(cut.writer.path))
    assert "verdict: still open at end of trace" in follow.stdout
