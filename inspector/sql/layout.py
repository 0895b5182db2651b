"""Where each message column of the schema sits in one opcode's messages, from the dissectors.

A message's body is the plan `dissectors.layouts` gives for its opcode and connection
(the negotiated minor picks old struct sizes, the dialect Android's open reply); its
leading structs are fixed, so a column's source (`schema.Source`) resolves, per opcode, to
a byte offset and a little-endian type, plus the flag word and bit an id of
`dissectors.ids` is conditional on. The builders then read a whole column of messages of
that opcode at once. Nothing here knows an offset of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE
from dissectors.context import FuseContext
from dissectors.ids import field_offsets, id_fields
from dissectors.layouts import notify_plan, reply_plan, request_plan, struct_size
from dissectors.quick import compiled
from dissectors.structs import FuseInHeader, FuseName, FuseNames, FuseOutHeader, FuseStruct

from .schema import Source

#: struct format code → numpy dtype
_DTYPES = {"B": "u1", "b": "i1", "H": "<u2", "h": "<i2", "I": "<u4", "i": "<i4",
           "Q": "<u8", "q": "<i8"}
_BODY = bytes(4096)  # a body long enough for any fixed struct: plans by opcode only


@dataclass(frozen=True)
class Slot:
    """A field at a fixed offset of a message; `when`: (offset, dtype, bit) of the flag
    that must be set for the field to hold what the column says."""

    at: int
    dtype: str
    when: tuple[int, str, int] | None = None


def _dtype(code: str) -> str | None:
    code = code.lstrip("<")
    return _DTYPES.get(code) if len(code) == 1 else None  # arrays ("16s") are no column


def header_slot(side: str, name: str) -> Slot:
    """A field of fuse_in_header (requests) or fuse_out_header (replies, notifications)."""
    at, code = field_offsets(FuseInHeader if side == "request" else FuseOutHeader)[name]
    dtype = _dtype(code)
    assert dtype is not None, name
    return Slot(at, dtype)


@lru_cache(maxsize=None)
def _leading(side: str, ctx: FuseContext, code: int) -> tuple[tuple[tuple[type, int], ...], int | None]:
    """((struct, its offset in the message), ...) of the fixed structs a body starts
    with, and where a name follows them (None: no name)."""
    if side == "request":
        plan, _ = request_plan(ctx, code, 0, _BODY)
        at = IN_HEADER_SIZE
    elif side == "reply":
        plan, _ = reply_plan(ctx.for_reply(code), 0, _BODY)
        at = OUT_HEADER_SIZE
    else:
        plan, _ = notify_plan(code, _BODY)
        at = OUT_HEADER_SIZE
    out = []
    for entry in plan:
        if isinstance(entry, type) and issubclass(entry, FuseStruct):
            out.append((entry, at))
            at += struct_size(entry)
            continue
        return tuple(out), (at if entry is FuseName or entry is FuseNames else None)
    return tuple(out), None


@lru_cache(maxsize=None)
def slot(source: Source, ctx: FuseContext, code: int) -> Slot | None:
    """Where `source` sits in messages of opcode (notify code) `code`, or None."""
    structs, _ = _leading(source.side, ctx, code)
    for struct, base in structs:
        offsets = field_offsets(struct)
        if source.id is not None:
            for idf in id_fields(struct):
                if idf.kind is not source.id or (idf.opcodes is not None
                                                 and code not in idf.opcodes):
                    continue
                at, fmt = offsets[idf.field]
                when = None
                if idf.when is not None:
                    flag_at, flag_fmt = offsets[idf.when[0]]
                    when = (base + flag_at, _dtype(flag_fmt) or "<u4", idf.when[1])
                return Slot(base + at, _dtype(fmt) or "<u8", when)
        elif source.field in compiled(struct).index:
            at, fmt = offsets[source.field]
            dtype = _dtype(fmt)
            if dtype is not None:
                return Slot(base + at, dtype)
    return None


@lru_cache(maxsize=None)
def name_at(side: str, ctx: FuseContext, code: int) -> int | None:
    """Where the first NUL-terminated name of such a message starts, or None."""
    return _leading(side, ctx, code)[1]
