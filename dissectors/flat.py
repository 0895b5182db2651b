"""Each fixed Scapy struct class as one `struct.Struct`, nested structs flattened as
`attr.size`: the form every fast path reads bytes with (`quick.py`'s list decoding,
`FastBuild`, `offsets.py`).

It depends on nothing of the dissectors but the field classes of `fields.py`, so
`structs.py` can use it while it is being defined.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from scapy.fields import Field, FlagsField, PacketField, StrField, StrFixedLenField
from scapy.packet import Packet

from .fields import (
    ErrnoField,
    ModeField,
    OpenFlagsField,
    errno_name,
    flags_repr,
    mode_repr,
    open_flags_repr,
)

_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}

Formatter = Callable[[Any], str]


@dataclass(frozen=True, eq=False)  # one instance per class: identity is equality
class Compiled:
    """A struct class as one `struct.Struct` with flattened member names."""

    cls: type[Packet]
    st: struct.Struct
    names: tuple[str, ...]
    formatters: tuple[Formatter | None, ...]
    index: dict[str, int]


def _formatter(fld: Field) -> Formatter | None:
    if isinstance(fld, ModeField):
        return mode_repr
    if isinstance(fld, OpenFlagsField):
        return open_flags_repr
    if isinstance(fld, ErrnoField):
        return lambda v: f"{v} ({errno_name(v)})" if v < 0 else str(v)
    if isinstance(fld, FlagsField):
        table = {1 << i: n for i, n in enumerate(fld.names) if not n.startswith("bit")}
        return lru_cache(maxsize=1024)(lambda v: flags_repr(v, table))
    if type(fld).__name__.startswith("X"):
        return hex
    enum = getattr(fld, "i2s", None)
    if enum:
        return lambda v: enum.get(v, str(v))
    return None


def _flatten(cls: type[Packet], prefix: str = "", head: bool = False
             ) -> list[tuple[str, str, Formatter | None]]:
    """(name, struct code, formatter) of each field; `head` stops at the first variable
    field instead of raising."""
    out: list[tuple[str, str, Formatter | None]] = []
    for fld in cls.fields_desc:
        name = prefix + fld.name
        if isinstance(fld, PacketField):
            out += _flatten(fld.cls, name + ".")
        elif isinstance(fld, StrFixedLenField):
            out.append((name, f"{fld.length_from(None)}s", None))
        elif isinstance(fld, StrField) or not hasattr(fld, "fmt"):  # names, data, lists
            if head:
                break
            raise TypeError(f"{cls.__name__}.{fld.name}: not a fixed-size field")
        elif isinstance(fld, FlagsField):
            out.append((name, _CODES[abs(fld.size) // 8], _formatter(fld)))
        else:
            out.append((name, fld.fmt.lstrip("<!>"), _formatter(fld)))
    return out


def _build(cls: type[Packet], parts: list[tuple[str, str, Formatter | None]]) -> Compiled:
    return Compiled(
        cls=cls,
        st=struct.Struct("<" + "".join(code for _, code, _ in parts)),
        names=tuple(name for name, _, _ in parts),
        formatters=tuple(fmt for _, _, fmt in parts),
        index={name: i for i, (name, _, _) in enumerate(parts)},
    )


@lru_cache(maxsize=None)
def compiled(cls: type[Packet]) -> Compiled:
    """A fixed struct class compiled; TypeError for a class with a variable field."""
    return _build(cls, _flatten(cls))


@lru_cache(maxsize=None)
def fixed_head(cls: type[Packet]) -> Compiled:
    """The fixed fields a class starts with (fuse_dirent before its name), compiled."""
    return _build(cls, _flatten(cls, head=True))
