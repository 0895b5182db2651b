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

from dissectors.constants import FOPEN_PASSTHROUGH, IN_HEADER_SIZE, Opcode

from ..lifecycles.wire import entry_nodeid, open_out

#: Field names a write through passthrough changes (last or inner parts of a path).
WRITTEN_FIELDS = frozenset({"size", "blocks", "atime", "mtime", "ctime", "btime", "atimensec",
                            "mtimensec", "ctimensec"})
#: How the report names what this hid.
WHY = "size, blocks and times of files written through passthrough (the data never reaches the server)"
_OPENS = frozenset({Opcode.OPEN, Opcode.CREATE})
_ATTRS_OF_REQUEST_NODE = frozenset({Opcode.GETATTR, Opcode.SETATTR, Opcode.STATX})
_ENTRY_REPLIES = frozenset({Opcode.LOOKUP, Opcode.MKNOD, Opcode.MKDIR, Opcode.SYMLINK,
                            Opcode.LINK, Opcode.CREATE, Opcode.TMPFILE})
_WRITABLE = (1, 2)  # O_WRONLY, O_RDWR (flags & O_ACCMODE)


class WrittenThrough:
    """Recorded node ids written through passthrough."""

    def __init__(self) -> None:
        self.nodes: set[int] = set()
        self.ever = 0  # nodes ever written through passthrough, for the report's note

    def opened(self, opcode: int, request: bytes, reply: bytes, nodeid: int,
               android: bool) -> None:
        """A recorded open and its successful reply."""
        if opcode not in _OPENS or len(request) < IN_HEADER_SIZE + 4:
            return
        flags = int.from_bytes(request[IN_HEADER_SIZE:IN_HEADER_SIZE + 4], "little")
        out = open_out(opcode, reply)
        if out is None or flags & 3 not in _WRITABLE or not out[2]:
            return
        if not (out[1] & FOPEN_PASSTHROUGH or android):
            return
        node = entry_nodeid(reply) if opcode == Opcode.CREATE else nodeid
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
        if opcode in _ATTRS_OF_REQUEST_NODE:
            return ("",) if nodeid in self.nodes else ()
        if opcode in _ENTRY_REPLIES:
            return ("",) if entry_nodeid(reply) in self.nodes else ()
        if opcode == Opcode.READDIRPLUS:
            return tuple(prefix + "." for prefix, node in entries if node in self.nodes)
        return ()


def hides(prefixes: tuple[str, ...], path: str) -> bool:
    """Whether a path under one of `prefixes` names a field passthrough writes change."""
    return any(path.startswith(p) for p in prefixes) and not WRITTEN_FIELDS.isdisjoint(
        path.split("."))
