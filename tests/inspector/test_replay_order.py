"""The replay's order and its divergence rule: a request goes out only after the replies it
depends on (those that handed out the ids it names, and the release that freed an id its
recorded reply reuses), and a request naming an id the replayed server never handed out
is not sent at all.

The plan is checked on hand-built traces; the two bugs of issue 21 are reproduced with
real servers: a handle reused right after RELEASEDIR (the pyfuse3 memfs with
`--small-handles`, as go-fuse hands them out) and a LOOKUP that fails in the replay (the
bundled passthroughfs on a copy of its source lacking the file).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dissectors import Message
from dissectors.constants import Opcode
from dissectors.structs import (
    FuseEntryOut,
    FuseInHeader,
    FuseInitIn,
    FuseInitOut,
    FuseName,
    FuseOpenIn,
    FuseOpenOut,
    FuseOutHeader,
    FuseReleaseIn,
    FuseRenameIn,
)
from inspector.replay import replay
from inspector.replay.order import plan
from inspector.replay.script import EXPECT, SEND, load
from inspector.testing import decode_trace, fuse_available, recorded_server
from record_support import MEMFS, PASSTHROUGHFS
from traces import Record, TraceReader, TraceWriter

# --- the plan, on hand-built traces ---------------------------------------------------------


OFFERED = 0x5FD73FFFFFB  # the INIT flags Linux 6.18 offers


def _init(w: TraceWriter) -> None:
    w.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2)
                    / FuseInitIn(max_readahead=131072, flags=OFFERED & 0xFFFFFFFF,
                                 flags2=OFFERED >> 32)))
    w.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut()))


def _lookup(w: TraceWriter, unique: int, parent: int, name: bytes, nodeid: int) -> None:
    w.request(bytes(FuseInHeader(opcode=Opcode.LOOKUP, unique=unique, nodeid=parent)
                    / FuseName(name=name)))
    w.reply(bytes(FuseOutHeader(unique=unique) / FuseEntryOut(nodeid=nodeid)))


def test_a_request_needs_the_replies_that_handed_out_every_id_it_names(tmp_path: Path) -> None:
    """RENAME names two nodes, one in its header and one in `newdir` (dissectors.ids says
    which fields): it waits for both LOOKUPs."""
    trace = tmp_path / "t.fzt"
    with TraceWriter(trace, {"source": "test"}) as w:
        _init(w)
        _lookup(w, 4, 1, b"a", 10)
        _lookup(w, 6, 1, b"b", 11)
        w.request(bytes(FuseInHeader(opcode=Opcode.RENAME, unique=8, nodeid=10)
                        / FuseRenameIn(newdir=11)) + b"x\0y\0")
        w.reply(bytes(FuseOutHeader(unique=8)))
    p = plan(load(trace))
    assert set(p.needs[8]) == {4, 6}
    assert [ex.unique for ex in p.order] == [2, 4, 6, 8]


def _opendir_then_create_race(w: TraceWriter) -> None:
    """CREATE sent, RELEASEDIR of handle 3 sent and answered, then CREATE answered with
    handle 3: two kernel threads at once, as the rclone session recorded it."""
    _init(w)
    w.request(bytes(FuseInHeader(opcode=Opcode.OPENDIR, unique=4, nodeid=1) / FuseOpenIn()))
    w.reply(bytes(FuseOutHeader(unique=4) / FuseOpenOut(fh=3)))
    w.request(bytes(FuseInHeader(opcode=Opcode.CREATE, unique=6, nodeid=1) / FuseOpenIn())
              + bytes(8) + b"new\0")
    w.request(bytes(FuseInHeader(opcode=Opcode.RELEASEDIR, unique=8, nodeid=1)
                    / FuseReleaseIn(fh=3)))
    w.reply(bytes(FuseOutHeader(unique=8)))
    w.reply(bytes(FuseOutHeader(unique=6) / FuseEntryOut(nodeid=20) / FuseOpenOut(fh=3)))


def test_a_create_whose_reply_reuses_a_released_handle_waits_for_the_release(tmp_path: Path) -> None:
    trace = tmp_path / "t.fzt"
    with TraceWriter(trace, {"source": "test"}) as w:
        _opendir_then_create_race(w)
    p = plan(load(trace))
    assert p.needs[6] == (8,) and p.held == 1
    assert [ex.unique for ex in p.order] == [2, 4, 8, 6]
    assert [(k, ex.unique) for k, ex in p.steps] == [
        (SEND, 2), (EXPECT, 2), (SEND, 4), (EXPECT, 4), (SEND, 8), (EXPECT, 8), (SEND, 6),
        (EXPECT, 6)]


# --- real servers ------------------------------------------------------------------------------

def _need_fuse() -> None:
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")




def _messages(trace: Path) -> list[tuple[Record, Message]]:
    return [(e.record, e.decoded) for e in decode_trace(trace).entries
            if isinstance(e.decoded, Message)]


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
@pytest.mark.parametrize("overlap", [False, True])
def test_a_handle_reused_after_releasedir_replays_without_differences(overlap: bool,
                                                                     tmp_path: Path) -> None:
    """Recorded from a server that reuses a handle at once, then made into the race the
    rclone session had: the CREATE request (and the LOOKUP that found no such file) moved
    before the RELEASEDIR whose handle its reply reuses. Sent in that order, the replayed CREATE would get another handle and
    everything after it would differ; held until the RELEASEDIR's reply, it gets the
    same one."""
    _need_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    recorded = tmp_path / "recorded.fzt"
    with recorded_server([*MEMFS, "--small-handles", str(mnt)], mnt, recorded, "-s", "0") as rec:
        (mnt / "d").mkdir()
        os.listdir(mnt / "d")
        time.sleep(0.3)  # the kernel sends RELEASEDIR in the background: let it be answered
        (mnt / "d" / "new").write_bytes(b"data\n")
        assert (mnt / "d" / "new").read_bytes() == b"data\n"
        assert rec.unmount_and_wait() == 0, rec.output()
    messages = _messages(recorded)
    releasedir = next(r for r, m in messages if r.is_request and m.brief.opcode == Opcode.RELEASEDIR)
    create = next(r for r, m in messages if r.is_request and m.brief.opcode == Opcode.CREATE)
    fh_of = {m.brief.unique: m.brief.get("fh") for r, m in messages if r.is_reply}
    released = next(m.brief.get("fh") for r, m in messages if r is releasedir)
    create_unique = next(m.brief.unique for r, m in messages if r is create)
    assert fh_of[create_unique] == released, "the CREATE should reuse the directory's handle"
    lookup = next(m.brief.unique for r, m in messages if r.is_request
                  and m.brief.opcode == Opcode.LOOKUP and m.raw.endswith(b"new\0"))
    moved = [r for r, m in messages if r is create or m.brief.unique == lookup]
    assert len(moved) == 3 and all(r.index > releasedir.index for r in moved)
    raced = tmp_path / "raced.fzt"
    with TraceReader(recorded) as reader, TraceWriter(raced, {
            k: v for k, v in reader.header.items() if k not in ("magic", "format")}) as out:
        records = list(reader)
        gone = {r.index for r in moved}
        order = [r for r in records if r.index not in gone]
        at = next(i for i, r in enumerate(order) if r.index == releasedir.index)
        order[at:at] = moved
        for r in order:
            out.copy(r)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    written = tmp_path / "replayed.fzt"
    report = replay(raced, [*MEMFS, "--small-handles", str(fresh)], overlap=overlap, write=written)
    assert report.ok, report.text()
    # the replayed CREATE went out after the RELEASEDIR's reply
    sent = [(r.is_request, m.brief.opcode, m.brief.unique) for r, m in _messages(written)]
    rd_unique = next(m.brief.unique for r, m in messages if r is releasedir)
    replies = [u for is_req, _, u in sent if not is_req]
    requests = [u for is_req, _, u in sent if is_req]
    assert replies.index(rd_unique) < replies.index(create_unique)
    assert requests.index(rd_unique) < requests.index(create_unique)


def _a_and_b(src: Path) -> None:
    (src / "a").write_bytes(b"alpha\n" * 100)
    (src / "b").write_bytes(b"beta\n")


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_a_request_naming_an_id_the_replayed_server_never_gave_is_not_sent(tmp_path: Path) -> None:
    """The recording's LOOKUP of 'a' handed out a node id; replayed on a copy without 'a'
    it fails, so the requests naming that node (GETATTR, OPEN) and the handle its OPEN gave
    (READ, FLUSH, RELEASE) are not sent. One difference, pinned to the LOOKUP's reply,
    counts them; the replay goes on, and the rest (the work on 'b') matches."""
    _need_fuse()
    pristine, src, mnt = tmp_path / "pristine", tmp_path / "src", tmp_path / "mnt"
    for d in (pristine, mnt):
        d.mkdir()
    _a_and_b(pristine)
    shutil.copytree(pristine, src)
    trace = tmp_path / "t.fzt"
    with recorded_server([*PASSTHROUGHFS, "--no-passthrough", str(src), str(mnt)], mnt, trace,
                         "-s", "0") as rec:
        os.stat(mnt / "a")
        assert (mnt / "a").read_bytes() == b"alpha\n" * 100
        assert (mnt / "b").read_bytes() == b"beta\n"
        assert rec.unmount_and_wait() == 0, rec.output()
    fresh = tmp_path / "fresh"
    shutil.copytree(pristine, fresh / "src")
    (fresh / "src" / "a").unlink()
    (fresh / "mnt").mkdir()
    written = tmp_path / "replayed.fzt"
    report = replay(trace, [*PASSTHROUGHFS, "--no-passthrough", str(fresh / "src"),
                            str(fresh / "mnt")], write=written)
    assert report.error is None, report.text()
    recorded = _messages(trace)
    lookup_a = [m.brief.unique for r, m in recorded if r.is_request
                and m.brief.opcode == Opcode.LOOKUP and m.raw.endswith(b"a\0")]
    lookup_replies = {r.index for r, m in recorded if r.is_reply and m.brief.unique in lookup_a}
    not_sent = [d for d in report.differences if d.what == "not sent"]
    assert len(not_sent) == 1 and not_sent[0].record in lookup_replies, report.text()
    assert "node id" in not_sent[0].summary
    assert {d.what for d in report.differences} == {"reply", "not sent"}
    assert all(d.record in lookup_replies for d in report.differences), report.text()
    # what depends on the missing node was not sent, and is counted
    replayed = _messages(written)
    ops = [m.brief.opcode for r, m in replayed if r.is_request]
    recorded_ops = [m.brief.opcode for r, m in recorded if r.is_request]
    assert report.counts["not_sent"] == len(recorded_ops) - len(ops) > 0
    assert ops.count(Opcode.OPEN) == recorded_ops.count(Opcode.OPEN) - 1
    assert ops.count(Opcode.READ) < recorded_ops.count(Opcode.READ)
    assert str(report.counts["not_sent"]) in not_sent[0].summary
    assert report.server_exit == "exited with status 0"


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
def test_a_batch_forget_keeps_only_the_nodes_the_replayed_server_handed_out(tmp_path: Path) -> None:
    """LOOKUP 'x' found a node when recorded and none in the replay; MKDIR 'y' made one in
    both. The BATCH_FORGET naming both goes out naming only y's node, as the kernel would
    have sent it, so y's lookup still goes back."""
    from dissectors.structs import FuseBatchForgetIn, FuseForgetList, FuseForgetOne, FuseMkdirIn

    trace = tmp_path / "t.fzt"
    with TraceWriter(trace, {"source": "test"}) as w:
        _init(w)
        _lookup(w, 4, 1, b"x", 5)
        w.request(bytes(FuseInHeader(opcode=Opcode.MKDIR, unique=6, nodeid=1)
                        / FuseMkdirIn(mode=0o40755) / FuseName(name=b"y")))
        w.reply(bytes(FuseOutHeader(unique=6) / FuseEntryOut(nodeid=6)))
        w.request(bytes(FuseInHeader(opcode=Opcode.BATCH_FORGET, unique=8, nodeid=0)
                        / FuseBatchForgetIn() / FuseForgetList(forgets=[
                            FuseForgetOne(nodeid=5, nlookup=1), FuseForgetOne(nodeid=6, nlookup=1)])))
    (tmp_path / "mnt").mkdir()
    written = tmp_path / "replayed.fzt"
    report = replay(trace, [*MEMFS, str(tmp_path / "mnt")], write=written)
    assert report.error is None, report.text()
    replayed = _messages(written)
    y_node = next(m.brief.get("nodeid") for r, m in replayed if r.is_reply and m.brief.unique == 6)
    [batch] = [m for r, m in replayed if r.is_request and m.brief.opcode == Opcode.BATCH_FORGET]
    assert batch.brief.get("count") == 1 and y_node
    assert batch.raw[-16:] == bytes(FuseForgetOne(nodeid=y_node, nlookup=1))
    assert len(batch.raw) == batch.brief.length
