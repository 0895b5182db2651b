"""The common reply compared as bytes: the replay's per-reply shortcut.

Most replies of a long session are fixed structs (GETATTR's fuse_attr_out, LOOKUP's
fuse_entry_out, a bare header for an error or a RELEASE). For such a reply `shape` works
out once per layout (opcode, length, error, struct classes) where its fields sit: the spans
to compare byte for byte, the masked fields (each with the mask that covers it, so the
report still counts what masks hid), and the server-chosen ids (node ids, file handles) to
learn. Comparing a reply of that shape is then a few slice comparisons, with no decoding.

Anything else, and any reply whose compared bytes differ or whose ids would break the
translation's one-to-one rule, goes the full way (`engine`), which says what differs; so
the shortcut never changes a report, only how soon it is made.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from dissectors.offsets import OUT_HEADER_SIZE
from dissectors.ids import field_offsets
from dissectors.quick import Brief

from .views import FH, IGNORED, NODE, PLAIN, layer_spec


@dataclass(frozen=True)
class Shape:
    """Where one layout's fields sit, as byte ranges of the whole message."""

    length: int
    compared: tuple[tuple[int, int], ...]  # (start, end): equal or the full comparison
    masked: tuple[tuple[int, int, str], ...]  # (start, end, the mask's name)
    ids: tuple[tuple[int, struct.Struct, int], ...]  # (offset, its format, NODE or FH)


#: The layout of a reply: (opcode, length, error, its structs) → Shape, or None (no shortcut)
ShapeKey = tuple[int, int, int, tuple[type, ...]]


def shape_key(opcode: int, raw: bytes, brief: Brief) -> ShapeKey | None:
    """The key of a recorded reply's layout; None when it has more than fixed structs (names,
    file data, directory entries) or any part of it is undecoded."""
    if brief.extras or brief.reason or len(raw) != brief.length:
        return None
    return opcode, len(raw), brief.error, tuple(comp.cls for comp, _ in brief.layers)


def shape(key: ShapeKey, brief: Brief, which: Callable[[int, str], str | None]) -> Shape | None:
    """The shape of the layout `key` (from a reply of it, `brief`); None when one of its ids
    is an id only under a condition (then each message decides, the full way)."""
    opcode, length, _, _ = key
    masked: list[tuple[int, int, str]] = []
    ids: list[tuple[int, struct.Struct, int]] = []
    skip: list[tuple[int, int]] = []
    at = OUT_HEADER_SIZE
    for comp, _ in brief.layers:
        spec = layer_spec(comp)
        if spec.conds:
            return None
        offsets = field_offsets(comp.cls)
        for i, name in enumerate(comp.names):
            start, code = offsets[name]
            fmt = struct.Struct("<" + code.lstrip("<"))
            span = (at + start, at + start + fmt.size)
            kind = spec.kinds[i]
            if kind == IGNORED:
                skip.append(span)
            elif kind in (NODE, FH):
                ids.append((span[0], fmt, kind))
                skip.append(span)
            elif kind != PLAIN:  # a backing id or directory offset: the full way
                return None
            else:
                why = which(opcode, spec.paths[i])
                if why is not None:
                    masked.append((*span, why))
                    skip.append(span)
        at += spec.size
    compared, pos = [], 0
    for start, end in sorted(skip):
        if start > pos:
            compared.append((pos, start))
        pos = max(pos, end)
    if pos < length:
        compared.append((pos, length))
    return Shape(length, tuple(compared), tuple(masked), tuple(ids))
