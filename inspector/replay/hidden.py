"""What a trace cannot hold, so a replay must not compare: attributes of files written
through passthrough.

With FOPEN_PASSTHROUGH the kernel writes to the backing file itself; the server never
sees the data, so the trace has none of it, and a replayed server's file keeps the size
it had. From a writable passthrough open of a node on, that node's size, blocks and
times are not compared in any reply that carries its attributes (GETATTR, SETATTR,
STATX, entry replies, READDIRPLUS entries). That lasts past the release of its last
passthrough handle: the written bytes are still missing from the replayed server's file.
Only when the node's id goes out of use (FORGET to zero, see `Translator`) is it dropped.
"""

from __future__ import annotations

import os
import struct

from dissectors.constants import FOPEN_PASSTHROUGH, Opcode
from dissectors.layouts import request_struct
from dissectors.offsets import IN_HEADER_SIZE, field_offsets
from dissectors.opcodes import ATTR_REPLIES, ENTRY_REPLIES, FILE_OPENS

from ..lifecycles.wire import entry_nodeid, open_out

#: Field names a write through passthrough changes (last or inner parts of a path).
WRITTEN_FIELDS = frozenset({"size", "blocks", "atime", "mtime", "ctime", "btime", "atimensec",
                            "mtimensec", "ctimensec"})
#: How the report names what this hid.
WHY = "size, blocks and times of files written through passthrough (the data never reaches the server)"
_WRITABLE = (os.O_WRONLY, os.O_RDWR)  # flags & O_ACCMODE
#: opcode → (offset in its struct, format) of the open flags of the requests of file opens
_FLAGS_AT = {op: field_offsets(request_struct(op))["flags"] for op in FILE_OPENS}


class WrittenThrough:
    """Recorded node ids written through passthrough."""

    def __init__(self) -> None:
        self.nodes: set[int] = set()
        self.ever = 0  # nodes ever written through passthrough, for the report's note

    def opened(self, opcode: int, request: bytes, reply: bytes, nodeid: int,
               android: bool) -> None:
        """A recorded open and its successful reply."""
        if opcode not in _FLAGS_AT:
            return
        at, code = _FLAGS_AT[opcode]
        if len(request) < IN_HEADER_SIZE + at + struct.calcsize(code):
            return
        flags = struct.unpack_from(code, request, IN_HEADER_SIZE + at)[0]
        out = open_out(opcode, reply)
        if out is None or flags & os.O_ACCMODE not in _WRITABLE or not out[2]:
            return
        if not (out[1] & FOPEN_PASSTHROUGH or android):
            return
        node = entry_nodeid(reply) if opcode in ENTRY_REPLIES else nodeid
        if node and node not in self.nodes:
            self.nodes.add(node)
            self.ever += 1

    def forgotten(self, node: int) -> None:
        self.nodes.discard(node)

    def prefixes(self, opcode: int, nodeid: int, reply: bytes,
                 entries: list[tuple[str, int]]) -> tuple[str, ...]:
        """Path prefixes of a recorded reply whose written fields are hidden: "" for the
        whole reply, `direntplus[k]` for entries; `entries` are (prefix, nodeid) of a
        READDIRPLUS reply's entries."""
        if not self.nodes:
            return ()
        if opcode in ATTR_REPLIES:
            return ("",) if nodeid in self.nodes else ()
        if opcode in ENTRY_REPLIES:
            return ("",) if entry_nodeid(reply) in self.nodes else ()
        if opcode == Opcode.READDIRPLUS:
            return tuple(prefix + "." for prefix, node in entries if node in self.nodes)
        return ()


def hides(prefixes: tuple[str, ...], path: str) -> bool:
    """Whether a path under one of `prefixes` names a field passthrough writes change."""
    return any(path.startswith(p) for p in prefixes) and not WRITTEN_FIELDS.isdisjoint(
        path.split("."))
