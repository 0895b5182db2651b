"""Where the protocol's words sit in message bytes, computed from the structs.

Code that reads messages without decoding them (the list's fast path, the trace index,
the lifecycle pass, exchanges, serve, and the C loops through the header generated from
this module, `traces/facts.h`) takes header sizes and field offsets from here: the numbers
are declared once, as the fields of `structs.py`.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache

from .flat import compiled, fixed_head
from .structs import FuseInHeader, FuseOutHeader

_TOKEN = re.compile(r"(\d*)([a-zA-Z?])")


@lru_cache(maxsize=None)
def field_offsets(cls: type) -> dict[str, tuple[int, str]]:
    """field name → (byte offset in the struct, its struct format code), for the fixed
    fields a struct starts with (all of them for a fixed struct; nested ones as `attr.size`)."""
    comp = fixed_head(cls)
    out, at = {}, 0
    tokens = [(count, code) for count, code in _TOKEN.findall(comp.st.format.lstrip("<"))
              if code != "x"]
    for name, (count, code) in zip(comp.names, tokens):
        out[name] = (at, "<" + count + code)
        at += struct.calcsize("<" + count + code)
    return out


def offset(cls: type, field: str) -> int:
    """Where one field of a struct starts."""
    return field_offsets(cls)[field][0]


@lru_cache(maxsize=None)
def reader(cls: type, *fields: str) -> struct.Struct:
    """A `struct.Struct` that unpacks `fields` of `cls` (given in their order in the
    struct) from the struct's first byte, skipping the others."""
    fmt, at = "<", 0
    for name in fields:
        start, code = field_offsets(cls)[name]
        if start < at:
            raise ValueError(f"{cls.__name__}.{name}: fields out of order")
        fmt += (f"{start - at}x" if start > at else "") + code[1:]
        at = start + struct.calcsize(code)
    return struct.Struct(fmt)


def put(cls: type, field: str, buf: bytearray, value: int, base: int = 0) -> None:
    """Write one field of a `cls` struct that starts at `base` of `buf`, in place."""
    at, code = field_offsets(cls)[field]
    struct.pack_into(code, buf, base + at, value)


IN_HEADER_SIZE = compiled(FuseInHeader).st.size
OUT_HEADER_SIZE = compiled(FuseOutHeader).st.size
#: fuse_in_header / fuse_out_header field → offset
IN_AT = {name: at for name, (at, _) in field_offsets(FuseInHeader).items()}
OUT_AT = {name: at for name, (at, _) in field_offsets(FuseOutHeader).items()}
if IN_AT["unique"] != OUT_AT["unique"]:
    raise ImportError("unique_of() needs `unique` at one offset in both headers")
_UNIQUE = reader(FuseInHeader, "unique")


def unique_of(raw: bytes) -> int:
    """`unique` of a request, reply or notification (it sits at one offset in both
    headers); 0 when the message is too short to hold it."""
    return _UNIQUE.unpack_from(raw)[0] if len(raw) >= _UNIQUE.size else 0
