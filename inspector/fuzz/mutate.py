"""Mutations of one recorded request: fields the kernel fills, set to values it could send.

Offsets are the lifecycle pass's view of the dissectors' structs (`lifecycles.wire`) and
fuse_in_header's; a name is the NUL-terminated tail of LOOKUP, UNLINK and RMDIR.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Callable

from dissectors.constants import IN_HEADER_SIZE as IN, Opcode
from inspector.lifecycles import wire

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
NODEID_AT = 16  # fuse_in_header.nodeid
NAMES: tuple[bytes, ...] = (b"", b"a" * 255, b".", b"..", b"\xff\xfe\x80", b"n" * 220,
                            b"x" * 201)
OFFSETS = (0, 1, (1 << 63) - 1, (1 << 64) - 1, 4096)
SIZES = (0, 1, 1 << 31, (1 << 32) - 1, 131072)
OPEN_FLAGS = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_APPEND, os.O_TRUNC, os.O_EXCL,
              os.O_DIRECT, os.O_SYNC, os.O_NOATIME)
_NAME_ONLY = frozenset({Opcode.LOOKUP, Opcode.UNLINK, Opcode.RMDIR})
_READS = frozenset({Opcode.READ, Opcode.READDIR, Opcode.READDIRPLUS})
STALE = 1 << 40  # a node id or handle no server handed out in a short session

Mutation = Callable[[bytes], bytes]


def _put(raw: bytes, at: int, st: struct.Struct, value: int) -> bytes:
    if len(raw) < at + st.size:
        return raw
    return raw[:at] + st.pack(value) + raw[at + st.size:]


def _named(raw: bytes, name: bytes) -> bytes:
    body = raw[:IN] + name + b"\0"
    return _U32.pack(len(body)) + body[4:]


def mutations(opcode: int, raw: bytes, nodes: list[int], fhs: list[int],
              rng: random.Random) -> list[tuple[str, Mutation]]:
    """The mutations that make sense for this request, described."""
    out: list[tuple[str, Mutation]] = [("as recorded", lambda r: r)]
    for node in (rng.choice(nodes) if nodes else 1, STALE, 0):
        out.append((f"nodeid {node}", lambda r, n=node: _put(r, NODEID_AT, _U64, n)))
    if opcode in _NAME_ONLY:
        for name in NAMES:
            out.append((f"name {name[:12]!r}{'…' if len(name) > 12 else ''} ({len(name)} bytes)",
                        lambda r, n=name: _named(r, n)))
    if opcode in wire.FH_FIRST:
        for fh in (rng.choice(fhs) if fhs else 0, STALE, 0):
            out.append((f"fh {fh}", lambda r, f=fh: _put(r, IN, _U64, f)))
    if opcode in _READS:
        for off in OFFSETS:
            out.append((f"offset {off}", lambda r, o=off: _put(r, IN + 8, _U64, o)))
        for size in SIZES:
            out.append((f"size {size}", lambda r, s=size: _put(r, IN + 16, _U32, s)))
    if opcode in (Opcode.OPEN, Opcode.OPENDIR):
        flags = 0
        for bit in rng.sample(OPEN_FLAGS, 3):
            flags |= bit
        out.append((f"flags {flags:#o}", lambda r, f=flags: _put(r, IN, _U32, f)))
        out.append(("flags O_APPEND", lambda r: _put(r, IN, _U32, os.O_WRONLY | os.O_APPEND)))
    if opcode == Opcode.FORGET:
        for count in (0, (1 << 64) - 1):
            out.append((f"nlookup {count}", lambda r, c=count: _put(r, IN, _U64, c)))
    return out
