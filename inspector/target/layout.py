"""Where a session's requests carry what a live target rewrites, and what a reply must be.

Everything here is a view of the dissectors: header offsets from `fuse_in_header` and
`fuse_out_header`, id fields from the one table of ids (`dissectors.ids`: the header's
nodeid, RENAME's `newdir`, LINK's `oldnodeid`, COPY_FILE_RANGE's `nodeid_out`, every
handle, BATCH_FORGET's `fuse_forget_one` entries), names and fixed reply sizes from the
layout plans at the session's negotiated minor and flags (compat structs included).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from dissectors.constants import Opcode
from dissectors.offsets import IN_HEADER_SIZE as IN, OUT_HEADER_SIZE as OUT
from dissectors.opcodes import DIR_NODE_OPCODES, INITS
from dissectors.context import FuseContext
from dissectors.fields import OPEN_FLAGS, LEFlags, OpenFlagsField
from dissectors.ids import Id, field_offsets, id_fields
from dissectors.layouts import REPLIES, request_plan, struct_size
from dissectors.quick import compiled
from dissectors.structs import (
    FuseBatchForgetIn,
    FuseForgetOne,
    FuseInHeader,
    FuseInterruptIn,
    FuseIoctlIn,
    FuseName,
    FuseNames,
    FuseOutHeader,
    FuseStruct,
    FuseWriteIn,
)

_IN, _OUT = field_offsets(FuseInHeader), field_offsets(FuseOutHeader)
LEN_AT = _IN["len"][0]
OPCODE_AT = _IN["opcode"][0]
UNIQUE_AT = _IN["unique"][0]
NODEID_AT = _IN["nodeid"][0]
ERROR_AT = _OUT["error"][0]
REPLY_UNIQUE_AT = _OUT["unique"][0]
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
IN_HEADER = struct.Struct("<" + "".join(code[1:] for _, code in _IN.values()))
OUT_HEADER = struct.Struct("<" + "".join(code[1:] for _, code in _OUT.values()))
#: fuse_interrupt_in.unique: the request an INTERRUPT names
INTERRUPTED_AT = IN + field_offsets(FuseInterruptIn)["unique"][0]
_BATCH = struct_size(FuseBatchForgetIn)
_BATCH_COUNT = field_offsets(FuseBatchForgetIn)["count"]
_FORGET_ONE = compiled(FuseForgetOne).st.size  # a list element, not a FuseStruct
_FORGET_NODE, _FORGET_COUNT = (field_offsets(FuseForgetOne)[f] for f in ("nodeid", "nlookup"))
#: Fields whose value the kernel derives from the payload that follows: mutating one
#: makes a message no kernel sends and that says nothing about the server.
_TIED = {(FuseWriteIn, "size"), (FuseBatchForgetIn, "count"),
         (FuseIoctlIn, "in_size"), (FuseIoctlIn, "out_size")}  # IOCTL's: _IOC_SIZE(cmd)
_UNUSED = frozenset({"padding", "dummy", "unused"})  # always 0 from the kernel


@dataclass(frozen=True)
class Slot:
    """A word of a request that holds an id (under `cond`: flag word offset, code, bit)."""

    at: int
    st: struct.Struct
    cond: tuple[int, struct.Struct, int] | None = None

    def holds(self, raw: bytes | bytearray) -> bool:
        if len(raw) < self.at + self.st.size:
            return False
        if self.cond is None:
            return True
        at, st, bit = self.cond
        return len(raw) >= at + st.size and bool(st.unpack_from(raw, at)[0] & bit)


@dataclass(frozen=True)
class Field:
    """An integer field of a request's fixed struct, for boundary values; `flags`: the
    bits the dissectors name, when it is a flag word."""

    name: str
    at: int
    st: struct.Struct
    flags: tuple[int, ...] = ()
    open_flags: bool = False  # open(2)'s flags, as OPEN and CREATE carry them


def _is_open_flags(struct_cls: type, name: str) -> bool:
    field = next((f for f in getattr(struct_cls, "fields_desc", ()) if f.name == name), None)
    return isinstance(field, OpenFlagsField)


def _named_bits(struct_cls: type, name: str) -> tuple[int, ...]:
    """The single bits a flag word's dissector field names (open flags, FATTR_*, …)."""
    field = next((f for f in getattr(struct_cls, "fields_desc", ()) if f.name == name), None)
    if isinstance(field, OpenFlagsField):
        return tuple(sorted(b for b in OPEN_FLAGS if b and not b & (b - 1)))
    if isinstance(field, LEFlags):  # names by bit position, unnamed ones "bitN"
        return tuple(1 << i for i, n in enumerate(field.names) if not n.startswith("bit"))
    return ()


class Layout:
    """The tables for one negotiated context, computed once per session."""

    def __init__(self, ctx: FuseContext) -> None:
        self.ctx = ctx
        self.nodes: dict[int, tuple[Slot, ...]] = {}
        self.fhs: dict[int, tuple[Slot, ...]] = {}
        self.names: dict[int, tuple[int, int]] = {}  # opcode → (where names start, how many)
        self.fields: dict[int, tuple[Field, ...]] = {}
        self.reply_sizes: dict[int, int] = {}
        header_node = Slot(NODEID_AT, U64)
        for opcode in Opcode:
            plan, _ = request_plan(ctx, opcode, 0, bytes(8192))
            fixed = [e for e in plan if isinstance(e, type) and issubclass(e, FuseStruct)]
            first = fixed[0] if fixed and plan and plan[0] is fixed[0] else None
            nodes = [header_node] if opcode not in INITS else []
            fhs: list[Slot] = []
            plain: list[Field] = []
            if first is not None:
                offsets = field_offsets(first)
                ids = {}
                for idf in id_fields(first):
                    if idf.opcodes is not None and opcode not in idf.opcodes:
                        continue
                    at, code = offsets[idf.field]
                    cond = None
                    if idf.when is not None:
                        flag_at, flag_code = offsets[idf.when[0]]
                        cond = (IN + flag_at, struct.Struct(flag_code), idf.when[1])
                    slot = Slot(IN + at, struct.Struct(code), cond)
                    ids[idf.field] = idf.kind
                    if idf.kind is Id.NODE:
                        nodes.append(slot)
                    elif idf.kind is Id.FH:
                        fhs.append(slot)
                for name, (at, code) in offsets.items():
                    if (name not in ids and name not in _UNUSED and (first, name) not in _TIED
                            and code[-1] in "BHIQbhiq"):
                        plain.append(Field(name, IN + at, struct.Struct(code),
                                           _named_bits(first, name), _is_open_flags(first, name)))
            self.nodes[opcode] = tuple(nodes)
            if fhs:
                self.fhs[opcode] = tuple(fhs)
            if plain:
                self.fields[opcode] = tuple(plain)
            lead = 0
            for e in plan:
                if e is FuseName or e is FuseNames:
                    self.names[opcode] = (IN + lead, 1 if e is FuseName else 2)
                    break
                if not (isinstance(e, type) and issubclass(e, FuseStruct)):
                    break
                lead += struct_size(e)
            size = self._fixed_reply(opcode)
            if size is not None:
                self.reply_sizes[opcode] = size

    def _fixed_reply(self, opcode: int) -> int | None:
        """The body size a successful reply must have when its layout is fixed structs only
        (the kernel refuses any other size for those)."""
        entry = REPLIES.get(opcode)
        if entry is None:
            return None
        plan = entry if isinstance(entry, list) else entry(self.ctx.for_reply(opcode), b"")
        if isinstance(plan, tuple):
            plan = plan[0]
        if not plan or not all(isinstance(e, type) and issubclass(e, FuseStruct) for e in plan):
            return None
        return sum(struct_size(e) for e in plan)

    def node_words(self, opcode: int, raw: bytes | bytearray) -> Iterator[tuple[int, int]]:
        """(offset, value) of every node id a request names, BATCH_FORGET's entries too."""
        for slot in self.nodes.get(opcode, ()):
            if slot.holds(raw):
                yield slot.at, slot.st.unpack_from(raw, slot.at)[0]
        if opcode == Opcode.BATCH_FORGET:
            for at, node, _ in forget_entries(raw):
                yield at, node

    def fh_words(self, opcode: int, raw: bytes | bytearray) -> Iterator[tuple[int, int]]:
        """(offset, value) of every file handle a request names."""
        for slot in self.fhs.get(opcode, ()):
            if slot.holds(raw):
                yield slot.at, slot.st.unpack_from(raw, slot.at)[0]


def forget_entries(raw: bytes | bytearray) -> Iterator[tuple[int, int, int]]:
    """(offset of its nodeid, nodeid, nlookup) of each of BATCH_FORGET's entries."""
    for at, node, _, count in forget_slots(raw):
        yield at, node, count


def forget_slots(raw: bytes | bytearray) -> Iterator[tuple[int, int, int, int]]:
    """(offset of nodeid, nodeid, offset of nlookup, nlookup) of BATCH_FORGET's entries."""
    if len(raw) < IN + _BATCH:
        return
    count = struct.unpack_from(_BATCH_COUNT[1], raw, IN + _BATCH_COUNT[0])[0]
    at = IN + _BATCH
    for _ in range(count):
        if len(raw) < at + _FORGET_ONE:
            return
        node_at, count_at = at + _FORGET_NODE[0], at + _FORGET_COUNT[0]
        yield node_at, U64.unpack_from(raw, node_at)[0], count_at, U64.unpack_from(raw, count_at)[0]
        at += _FORGET_ONE


def with_forgets(raw: bytes | bytearray, entries: list[tuple[int, int]]) -> bytearray:
    """A BATCH_FORGET with its entries replaced by (nodeid, nlookup) `entries`."""
    out = bytearray(raw[:IN + _BATCH])
    struct.pack_into(_BATCH_COUNT[1], out, IN + _BATCH_COUNT[0], len(entries))
    for node, count in entries:
        one = bytearray(_FORGET_ONE)
        U64.pack_into(one, _FORGET_NODE[0], node)
        U64.pack_into(one, _FORGET_COUNT[0], count)
        out += one
    U32.pack_into(out, LEN_AT, len(out))
    return out


def reply_header(raw: bytes) -> tuple[int, int, int]:
    """(len, error, unique) of a reply or notification."""
    return OUT_HEADER.unpack_from(raw) if len(raw) >= OUT else (0, 0, 0)
