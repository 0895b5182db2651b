"""`fusetrace serve` without a mount: which recorded reply answers which live request.

Traces are written here message by message with the dissectors' classes, so each rule
(each reply once, repeats, no answer from after an unmade change, passthrough stripped,
INIT limited, misses with their closest request) is pinned on a small conversation.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.packet import Packet

from dissectors import decode_reply
from dissectors.constants import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_SIZE,
    FOPEN_PASSTHROUGH,
    FUSE_INIT_EXT,
    FUSE_PASSTHROUGH,
    Opcode,
)
from dissectors.context import DEFAULT_CONTEXT
from dissectors.structs import (
    FuseAttr,
    FuseAttrOut,
    FuseData,
    FuseEntryOut,
    FuseGetattrIn,
    FuseInHeader,
    FuseInitIn,
    FuseInitOut,
    FuseName,
    FuseOpenIn,
    FuseOpenOut,
    FuseOutHeader,
    FuseReadIn,
    FuseSetattrIn,
    FuseWriteIn,
    FuseWriteOut,
)
from inspector.serve import ReplyBook, Responder, parse_errno
from inspector.serve.responder import PASSTHROUGH_NOTE
from traces import TraceReader, TraceWriter
from traces.testing import synthetic_trace

OFFERED = 0x5FD73FFFFFB  # this kernel's INIT offer (passthrough included)
GRANTED = 0x1 | FUSE_INIT_EXT | FUSE_PASSTHROUGH


def request(op: int, unique: int, nodeid: int, body: Packet | None = None, pid: int = 100) -> bytes:
    hdr = FuseInHeader(opcode=op, unique=unique, nodeid=nodeid, pid=pid)
    return bytes(hdr / body if body is not None else hdr)


def reply(unique: int, body: Packet | None = None, error: int = 0) -> bytes:
    hdr = FuseOutHeader(unique=unique, error=-error)
    return bytes(hdr / body if body is not None else hdr)


def init_request(unique: int = 1, offered: int = OFFERED) -> bytes:
    return request(Opcode.INIT, unique, 0, FuseInitIn(
        major=7, minor=45, max_readahead=131072, flags=offered & 0xFFFFFFFF,
        flags2=offered >> 32))


def attr(size: int) -> FuseAttrOut:
    return FuseAttrOut(attr_valid=1, attr=FuseAttr(ino=20, size=size, mode=0o100644, nlink=1))


def getattr_(unique: int, nodeid: int = 2) -> bytes:
    return request(Opcode.GETATTR, unique, nodeid, FuseGetattrIn())


def write(unique: int, data: bytes, lock_owner: int = 0) -> bytes:
    return request(Opcode.WRITE, unique, 2, FuseWriteIn(fh=7, size=len(data), lock_owner=lock_owner)
                   / FuseData(data=data))


def lookup(unique: int, name: bytes) -> bytes:
    return request(Opcode.LOOKUP, unique, 1, FuseName(name=name))


def entry(unique: int, nodeid: int = 2) -> bytes:
    return reply(unique, FuseEntryOut(nodeid=nodeid, entry_valid=1, attr_valid=1,
                                      attr=FuseAttr(ino=20, mode=0o100644, nlink=1)))


def write_trace(path: Path, pairs: list[tuple[bytes, bytes | None]], snaplen: int = 0,
                init_flags: int = GRANTED) -> Path:
    """INIT, then each (request, reply) in order (no reply: None)."""
    with TraceWriter(path, {"source": "test", "snaplen": snaplen}) as w:
        w.request(init_request())
        w.reply(reply(1, FuseInitOut(major=7, minor=45, flags=init_flags & 0xFFFFFFFF,
                                     flags2=init_flags >> 32, max_write=1 << 20,
                                     max_pages=256, max_stack_depth=1)))
        for req, rep in pairs:
            w.request(req)
            if rep is not None:
                w.reply(rep)
    return path


def responder(path: Path, **kw: Any) -> Responder:
    res = Responder(ReplyBook.load(path), **kw)
    res.respond(init_request(unique=1))
    return res


def answer(res: Responder, raw: bytes) -> bytes:
    out = res.respond(raw)
    assert out is not None
    assert out[8:16] == raw[8:16], "the reply must carry the live unique"
    return out


def size_in(raw: bytes) -> int:
    return decode_reply(raw, DEFAULT_CONTEXT.for_reply(Opcode.GETATTR))[FuseAttrOut].attr.size


def error_of(raw: bytes) -> int:
    return -struct.unpack_from("<i", raw, 4)[0]


# --- each reply once, repeats, changes --------------------------------------------------

def test_each_reply_once_then_the_latest_again(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.fzt", [
        (getattr_(2), reply(2, attr(10))),
        (getattr_(3), reply(3, attr(11))),
    ])
    res = responder(trace)
    sizes = [size_in(answer(res, getattr_(u))) for u in (50, 51, 52, 53)]
    assert sizes == [10, 11, 11, 11]
    report = res.finish("end")
    assert report.ok and report.answered == 4 and report.repeated["GETATTR"] == 2


def test_no_answer_from_after_a_change_not_made_yet(tmp_path: Path) -> None:
    """Recorded: size 0, WRITE, size 3. Asking twice before the WRITE gets size 0 twice;
    after it, size 3."""
    trace = write_trace(tmp_path / "t.fzt", [
        (getattr_(2), reply(2, attr(0))),
        (write(3, b"abc"), reply(3, FuseWriteOut(size=3))),
        (getattr_(4), reply(4, attr(3))),
    ])
    res = responder(trace)
    assert size_in(answer(res, getattr_(10))) == 0
    assert size_in(answer(res, getattr_(11))) == 0
    assert error_of(answer(res, write(12, b"abc", lock_owner=0xdead))) == 0
    assert size_in(answer(res, getattr_(13))) == 3
    assert size_in(answer(res, getattr_(14))) == 3
    report = res.finish("end")
    assert report.ok and report.repeated["GETATTR"] == 2 and report.unused == 0


def test_a_failed_change_does_not_hold_answers_back(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.fzt", [
        (getattr_(2), reply(2, attr(0))),
        (write(3, b"abc"), reply(3, error=errno.ENOSPC)),
        (getattr_(4), reply(4, attr(1))),
    ])
    res = responder(trace)
    assert [size_in(answer(res, getattr_(u))) for u in (10, 11)] == [0, 1]


def test_ignored_fields_do_not_prevent_a_match(tmp_path: Path) -> None:
    """pid, lock_owner, and SETATTR times the kernel sets to "now" differ every run."""
    valid = FATTR_SIZE | FATTR_ATIME | FATTR_ATIME_NOW

    def setattr_(unique: int, when: int, pid: int) -> bytes:
        body = FuseSetattrIn(valid=valid, size=5, atime=when, ctime=when)
        return request(Opcode.SETATTR, unique, 2, body, pid=pid)

    trace = write_trace(tmp_path / "t.fzt", [(setattr_(2, 1000, 1), reply(2, attr(5)))])
    res = responder(trace)
    assert size_in(answer(res, setattr_(9, 2000, 77))) == 5
    assert res.finish("end").ok


# --- misses ----------------------------------------------------------------------------

def test_a_miss_names_the_closest_recorded_request_and_what_differs(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.fzt", [
        (lookup(2, b"alpha"), entry(2)),
        (getattr_(3), reply(3, attr(1))),
    ])
    res = responder(trace, miss_errno=errno.ENOENT)
    assert error_of(answer(res, lookup(20, b"beta"))) == errno.ENOENT
    assert error_of(answer(res, lookup(21, b"beta"))) == errno.ENOENT
    assert error_of(answer(res, request(Opcode.STATFS, 22, 1))) == errno.ENOENT
    report = res.finish("end")
    assert not report.ok and report.unmatched == 3
    beta, statfs = report.misses.values()
    assert beta.request == "LOOKUP nodeid=1 name='beta'" and beta.count == 2
    assert beta.closest == "#2 LOOKUP nodeid=1 name='alpha'"
    assert beta.differs == ["name: 'beta' here, 'alpha' recorded"]
    assert statfs.closest is None and statfs.note == "the trace holds no STATFS request"
    text = report.text()
    assert "3 without a match (answered ENOENT)" in text
    assert "closest recorded: #2 LOOKUP nodeid=1 name='alpha'" in text


def test_write_data_is_compared(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.fzt", [(write(2, b"abc"), reply(2, FuseWriteOut(size=3)))])
    res = responder(trace)
    assert error_of(answer(res, write(5, b"abd"))) == errno.EIO
    [miss] = res.finish("end").misses.values()
    assert miss.differs[0].startswith("data: 3 bytes (sha256 ")


def test_data_cut_by_the_snap_length_is_compared_as_far_as_it_was_kept(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    path = tmp_path / "t.fzt"
    with TraceWriter(path, {"source": "test", "snaplen": 16}) as w:
        w.request(init_request())
        w.reply(reply(1, FuseInitOut(major=7, minor=45, max_write=1 << 20)))
        full = write(2, data)
        w.request(full[:40 + 40 + 16], len=len(full))
        w.reply(reply(2, FuseWriteOut(size=len(data))))
        read = request(Opcode.READ, 3, 2, FuseReadIn(fh=7, size=4096))
        w.request(read)
        whole = reply(3, FuseData(data=data))
        w.reply(whole[:16 + 16], len=len(whole))
    res = responder(path)
    assert error_of(answer(res, write(9, data[:16] + b"x" * (len(data) - 16)))) == 0
    assert error_of(answer(res, read)) == errno.EIO  # matched, but its data is gone
    report = res.finish("end")
    assert report.cut["READ"] == 1 and not report.misses and not report.ok
    assert "record with -s 0" in report.text()


# --- passthrough and INIT --------------------------------------------------------------

def test_passthrough_opens_are_served_without_passthrough(tmp_path: Path) -> None:
    opened = reply(2, FuseOpenOut(fh=7, open_flags=FOPEN_PASSTHROUGH | 1 << 6, backing_id=3))
    trace = write_trace(tmp_path / "t.fzt", [
        (request(Opcode.OPEN, 2, 2, FuseOpenIn(flags=os.O_RDONLY)), opened),
    ])
    res = responder(trace)
    served = answer(res, request(Opcode.OPEN, 30, 2, FuseOpenIn(flags=os.O_RDONLY)))
    out = decode_reply(served, DEFAULT_CONTEXT.for_reply(Opcode.OPEN))[FuseOpenOut]
    assert (out.fh, out.open_flags, out.backing_id) == (7, 1 << 6, 0)
    assert error_of(answer(res, request(Opcode.READ, 31, 2, FuseReadIn(fh=7, size=4096)))) == errno.EIO
    [miss] = res.finish("end").misses.values()
    assert miss.note == PASSTHROUGH_NOTE


def test_init_grants_what_was_recorded_and_offered_but_never_passthrough(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.fzt", [], init_flags=GRANTED | 0x8)
    res = Responder(ReplyBook.load(trace))
    served = res.respond(init_request(unique=9, offered=OFFERED & ~0x8))
    assert served is not None
    out = decode_reply(served, DEFAULT_CONTEXT.for_reply(Opcode.INIT))
    init = out[FuseInitOut]
    assert out.unique == 9
    assert init.flags | init.flags2 << 32 == 0x1 | FUSE_INIT_EXT
    assert (init.max_stack_depth, init.max_write, init.max_pages) == (0, 1 << 20, 256)


def test_a_recorded_session_answers_its_own_requests_identically(tmp_path: Path) -> None:
    """A synthetic session (out-of-order replies, errors, passthrough opens, cut data),
    fed back in recorded order, gets every recorded reply back; cut READs get EIO."""
    path = tmp_path / "s.fzt"
    synthetic_trace(path, 3000, seed=5)
    book = ReplyBook.load(path)
    res = Responder(book)
    recorded: dict[int, bytes] = {ex.brief.unique: ex.reply for ex in book.exchanges}
    cut = {ex.brief.unique for ex in book.exchanges if ex.cut}
    assert cut and book.passthrough_fhs
    checked = 0
    with TraceReader(path) as reader:
        for rec in reader:
            if not rec.is_request or rec.raw is None:
                continue
            out = res.respond(rec.raw)
            unique = int.from_bytes(rec.raw[8:16], "little")
            if unique in cut:
                assert out is not None and error_of(out) == errno.EIO
            elif unique in recorded:
                assert out == recorded[unique], unique
                checked += 1
    report = res.finish("end")
    assert checked > 500 and not report.repeated and report.unused == 0


def test_parse_errno() -> None:
    assert parse_errno("EIO") == errno.EIO
    assert parse_errno("enoent") == errno.ENOENT
    assert parse_errno("38") == errno.ENOSYS
    for bad in ("EWHATEVER", "0", "-5", "errorcode"):
        with pytest.raises(ValueError):
            parse_errno(bad)


def test_an_ioctl_matches_whatever_address_its_caller_passed(tmp_path: Path) -> None:
    from dissectors.structs import FuseIoctlIn

    def tcgets(unique: int, arg: int) -> bytes:
        return request(Opcode.IOCTL, unique, 2, FuseIoctlIn(fh=1, cmd=0x5401, arg=arg))

    trace = write_trace(tmp_path / "t.fzt", [(tcgets(2, 0x7FFD0000), reply(2, error=errno.ENOTTY))])
    res = responder(trace)
    assert error_of(answer(res, tcgets(8, 0x7FFE1234))) == errno.ENOTTY
    assert res.finish("end").ok
