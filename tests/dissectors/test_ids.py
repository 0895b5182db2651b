"""The one table of ids (`dissectors.ids`) against each consumer's view of it: for every id
field of every request and reply, with its condition met and not, a message is made and
the replay's translation (`inspector.replay.views`), the lifecycle pass's wire offsets
(`inspector.lifecycles.wire`) and serve's request keys (`inspector.serve.keys`) must see
exactly the ids the table says, where it says."""

from __future__ import annotations

import struct
from typing import Iterator

import pytest

from dissectors.constants import FOPEN_PASSTHROUGH, Opcode
from dissectors.offsets import IN_HEADER_SIZE
from dissectors.context import DEFAULT_CONTEXT
from dissectors.ids import (
    ID_FIELDS,
    KERNEL_CHOSEN,
    Id,
    IdField,
    field_offsets,
    id_fields,
)
from dissectors.layouts import request_plan
from dissectors.quick import brief_request, compiled
from dissectors.structs import FuseGetattrIn, FuseInHeader, FuseName, FuseNames, FuseOpenOut
from inspector.lifecycles.wire import request_fhs
from inspector.replay.translate import Translator
from inspector.replay.views import BACKING, DIROFF, FH, NODE, PLAIN, layer_spec, request_view
from inspector.serve.keys import request_fields

VALUE = 0x5A5A  # the id planted in each message
_VIEW = {Id.NODE: NODE, Id.FH: FH, Id.BACKING: BACKING, Id.DIROFF: DIROFF}


def _requests() -> Iterator[tuple[int, type, list[type]]]:
    """(opcode, its request's first struct, the whole plan) at the current protocol."""
    for opcode in Opcode:
        plan, _ = request_plan(DEFAULT_CONTEXT, opcode, 0, bytes(4096))
        if plan:
            yield opcode, plan[0], plan


def _cases() -> Iterator[tuple[int, IdField, bool]]:
    """Every (opcode, id field of its request struct, condition met?) worth making."""
    for opcode, first, _ in _requests():
        for idf in id_fields(first):
            yield opcode, idf, True
            if idf.when is not None:
                yield opcode, idf, False


def _message(opcode: int, idf: IdField, met: bool) -> tuple[bytes, int]:
    """A request of `opcode` whose `idf` holds VALUE, its condition met or not; returns it
    and the id's offset in it."""
    plan = dict((op, p) for op, _, p in _requests())[opcode]
    offsets = field_offsets(idf.struct)
    body = bytearray(compiled(idf.struct).st.size)
    at, code = offsets[idf.field]
    struct.pack_into(code, body, at, VALUE)
    if idf.when is not None and met:
        flag_at, flag_code = offsets[idf.when[0]]
        struct.pack_into(flag_code, body, flag_at, idf.when[1])
    if FuseNames in plan:
        body += b"a\0b\0"
    elif FuseName in plan:
        body += b"a\0"
    raw = bytes(FuseInHeader(len=IN_HEADER_SIZE + len(body), opcode=opcode, unique=2, nodeid=7))
    return raw + bytes(body), IN_HEADER_SIZE + at


@pytest.mark.parametrize("opcode, idf, met", list(_cases()),
                         ids=lambda v: v.name if isinstance(v, Opcode) else (
                             f"{v.struct.__name__}.{v.field}" if isinstance(v, IdField) else str(v)))
def test_every_consumer_sees_the_tables_ids(opcode: int, idf: IdField, met: bool) -> None:
    raw, at = _message(opcode, idf, met)
    brief = brief_request(raw)
    assert not brief.reason and brief.get(idf.field) == VALUE, (brief.reason, idf)  # the offset is the dissector's
    holds = met and idf.applies(opcode, {idf.when[0]: idf.when[1]} if idf.when else {})
    # replay: rewritten where the table has a server-chosen id, nowhere else at that offset
    slots = {(offset, kind) for offset, kind, _ in request_view(raw, brief).slots}
    if idf.kind in _VIEW:
        assert ((at, _VIEW[idf.kind]) in slots) == holds
    else:
        assert all(offset != at for offset, _ in slots)
    # lifecycles: the handles a request names
    if idf.kind is Id.FH:
        assert (VALUE in request_fhs(opcode, raw)) == holds
    # serve: kernel-chosen ids never match; a word that is no id in this message neither
    fields = request_fields(brief, raw, 0)
    if idf.kind in KERNEL_CHOSEN or (idf.when is not None and not met):
        assert idf.field not in fields
    else:
        assert fields[idf.field] == VALUE


def test_every_id_field_is_a_field_of_its_struct() -> None:
    for idf in ID_FIELDS:
        assert idf.field in field_offsets(idf.struct), idf
        if idf.when is not None:
            assert idf.when[0] in field_offsets(idf.struct), idf


def test_reply_kinds_follow_the_condition() -> None:
    """fuse_open_out.backing_id is a backing id only with FOPEN_PASSTHROUGH."""
    spec = layer_spec(compiled(FuseOpenOut))
    i, flags = spec.comp.index["backing_id"], spec.comp.index["open_flags"]
    on = [0] * len(spec.kinds)
    on[flags] = FOPEN_PASSTHROUGH
    assert spec.kinds_for(Opcode.OPEN, tuple(on))[i] == BACKING
    assert spec.kinds_for(Opcode.OPEN, tuple([0] * len(spec.kinds)))[i] == PLAIN
    assert spec.kinds_for(Opcode.OPEN, tuple(on))[spec.comp.index["fh"]] == FH


def test_replay_rewrites_getattrs_fh_only_with_the_flag() -> None:
    """The bug the table fixed: GETATTR's fh was rewritten with FUSE_GETATTR_FH unset."""
    tr = Translator()
    tr.learn(FH, 0x10, 0x99)
    idf = next(f for f in id_fields(FuseGetattrIn) if f.kind is Id.FH)
    for met in (True, False):
        raw, at = _message(Opcode.GETATTR, idf, met)
        raw = raw[:at] + (0x10).to_bytes(8, "little") + raw[at + 8:]
        changes = dict(tr.rewrite(request_view(raw, brief_request(raw))))
        assert (changes.get(at) == 0x99) == met
