"""`reduce` keeps as dependencies every id a request names, as the one table of ids
(`dissectors.ids`) lists them: not only the header's nodeid and a handle, but RENAME's
`newdir`, LINK's `oldnodeid`, COPY_FILE_RANGE's `nodeid_out` and BATCH_FORGET's entries."""

from __future__ import annotations

import struct
from pathlib import Path

from dissectors.constants import Opcode
from dissectors.structs import (
    FuseBatchForgetIn,
    FuseCopyFileRangeIn,
    FuseEntryOut,
    FuseForgetList,
    FuseForgetOne,
    FuseInHeader,
    FuseInitIn,
    FuseInitOut,
    FuseLinkIn,
    FuseName,
    FuseNames,
    FuseOpenIn,
    FuseOpenOut,
    FuseOutHeader,
    FuseReleaseIn,
    FuseRenameIn,
)
from inspector.reduce.units import Cut, cut
from traces import TraceWriter


def _entry(unique: int, node: int) -> bytes:
    return bytes(FuseOutHeader(unique=unique) / FuseEntryOut(nodeid=node))


def _trace(path: Path) -> Path:
    """INIT; LOOKUP a → 10, b → 11, dir d → 12; OPEN a → fh 7, OPEN b → fh 8; then each
    request that names ids outside the header."""
    exchanges = [
        (FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn(major=7, minor=45),
         bytes(FuseOutHeader(unique=2) / FuseInitOut(major=7, minor=45))),
        (FuseInHeader(opcode=Opcode.LOOKUP, unique=4, nodeid=1) / FuseName(name=b"a"), _entry(4, 10)),
        (FuseInHeader(opcode=Opcode.LOOKUP, unique=6, nodeid=1) / FuseName(name=b"b"), _entry(6, 11)),
        (FuseInHeader(opcode=Opcode.LOOKUP, unique=8, nodeid=1) / FuseName(name=b"d"), _entry(8, 12)),
        (FuseInHeader(opcode=Opcode.OPEN, unique=10, nodeid=10) / FuseOpenIn(),
         bytes(FuseOutHeader(unique=10) / FuseOpenOut(fh=7))),
        (FuseInHeader(opcode=Opcode.OPEN, unique=12, nodeid=11) / FuseOpenIn(),
         bytes(FuseOutHeader(unique=12) / FuseOpenOut(fh=8))),
        (FuseInHeader(opcode=Opcode.RENAME, unique=14, nodeid=1) / FuseRenameIn(newdir=12)
         / FuseNames(name=b"x", name2=b"y"), bytes(FuseOutHeader(unique=14))),
        (FuseInHeader(opcode=Opcode.LINK, unique=16, nodeid=1) / FuseLinkIn(oldnodeid=11)
         / FuseName(name=b"l"), _entry(16, 11)),
        (FuseInHeader(opcode=Opcode.COPY_FILE_RANGE, unique=18, nodeid=10)
         / FuseCopyFileRangeIn(fh_in=7, nodeid_out=11, fh_out=8, len=1), None),
        (FuseInHeader(opcode=Opcode.BATCH_FORGET, unique=20)
         / FuseBatchForgetIn(count=2) / FuseForgetList(forgets=[
             FuseForgetOne(nodeid=12, nlookup=1), FuseForgetOne(nodeid=11, nlookup=2)]),
         None),
    ]
    with TraceWriter(path, {"source": "test"}) as out:
        for request, reply in exchanges:
            out.request(bytes(request))
            if reply is not None:
                out.reply(reply)
    return path


def _needs(c: Cut, opcode: int) -> set[str]:
    """What the first `opcode` exchange keeps: LOOKUPs by name, OPENs by node id."""
    unit = next(i for i, u in enumerate(c.units) if u.opcode == opcode)
    out = set()
    for j in c.closure([unit]):
        raw = c.records[c.units[j].records[0]].raw or b""
        _, op, _, node = struct.unpack_from("<IIQQ", raw)
        if j != unit and op == Opcode.LOOKUP:
            out.add(f"LOOKUP {raw[40:-1].decode()}")
        elif j != unit and op == Opcode.OPEN:
            out.add(f"OPEN {node}")
    return out


def test_every_id_field_of_the_table_is_a_dependency(tmp_path: Path) -> None:
    c = cut(_trace(tmp_path / "t.fzt"))
    assert _needs(c, Opcode.RENAME) == {"LOOKUP d"}  # newdir
    assert _needs(c, Opcode.LINK) == {"LOOKUP b"}  # oldnodeid
    # nodeid (a), fh_in (OPEN of a), nodeid_out (b), fh_out (OPEN of b)
    assert _needs(c, Opcode.COPY_FILE_RANGE) == {"LOOKUP a", "LOOKUP b", "OPEN 10", "OPEN 11"}
    assert _needs(c, Opcode.BATCH_FORGET) == {"LOOKUP d", "LOOKUP b"}  # every entry's


def test_an_open_keeps_its_release(tmp_path: Path) -> None:
    """Without its RELEASE, a candidate could FORGET a node a file is still open on."""
    path = tmp_path / "t.fzt"
    with TraceWriter(path, {"source": "test"}) as out:
        out.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn(major=7, minor=45)))
        out.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut(major=7, minor=45)))
        out.request(bytes(FuseInHeader(opcode=Opcode.LOOKUP, unique=4, nodeid=1) / FuseName(name=b"a")))
        out.reply(_entry(4, 10))
        out.request(bytes(FuseInHeader(opcode=Opcode.OPEN, unique=6, nodeid=10) / FuseOpenIn()))
        out.reply(bytes(FuseOutHeader(unique=6) / FuseOpenOut(fh=7)))
        out.request(bytes(FuseInHeader(opcode=Opcode.RELEASE, unique=8, nodeid=10) / FuseReleaseIn(fh=7)))
        out.reply(bytes(FuseOutHeader(unique=8)))
    c = cut(path)
    opened = next(i for i, u in enumerate(c.units) if u.opcode == Opcode.OPEN)
    assert {Opcode(c.units[j].opcode).name for j in c.closure([opened])} == {
        "INIT", "LOOKUP", "OPEN", "RELEASE"}


def test_a_removal_keeps_the_exchange_that_gave_the_name(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    with TraceWriter(path, {"source": "test"}) as out:
        out.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn(major=7, minor=45)))
        out.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut(major=7, minor=45)))
        out.request(bytes(FuseInHeader(opcode=Opcode.LOOKUP, unique=4, nodeid=1) / FuseName(name=b"a")))
        out.reply(_entry(4, 10))
        out.request(bytes(FuseInHeader(opcode=Opcode.UNLINK, unique=6, nodeid=1) / FuseName(name=b"a")))
        out.reply(bytes(FuseOutHeader(unique=6)))
    c = cut(path)
    assert _needs(c, Opcode.UNLINK) == {"LOOKUP a"}
