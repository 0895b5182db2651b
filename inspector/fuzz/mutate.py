"""Mutations of one request, already rewritten to the live session's ids.

Generic, from the dissectors' description of the request (`target.layout`), never aimed
at a particular server:

- ids: every node id a request names (the header's, RENAME's `newdir`, LINK's
  `oldnodeid`, COPY_FILE_RANGE's `nodeid_out`) set to another node the kernel holds a
  lookup of, every handle to another open one of the same kind (file or directory);
- names in every request that carries them (LOOKUP, MKDIR, MKNOD, CREATE, SYMLINK, LINK,
  RENAME, RENAME2, UNLINK, RMDIR, xattr names …) at the limits: 1 byte, NAME_MAX,
  NAME_MAX + 1, the kernel's own FUSE_NAME_MAX, bytes that are not UTF-8, and a
  symlink target of PATH_MAX - 1;
- every integer field of the request's fixed struct (offsets, sizes, flags, modes …) at
  the boundaries of its width, or with one bit set; a flag word with each flag its
  dissector names (open flags, FATTR_* …) added instead, but the open flags the VFS
  keeps to itself;
- FORGET of exactly the lookups the kernel holds (READDIRPLUS entries counted);
- timing: the request overlapped with another, or followed at once by its INTERRUPT.

`hostile` mutations send what no kernel sends (node ids and handles never handed out or
already dropped, 0, empty names, '.', '..', a '/' inside, names past FUSE_NAME_MAX,
FORGETs of more than was looked up): a server may trust the kernel there, so they are
only used when asked for (`--hostile`).
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass
from typing import Callable

from dissectors.constants import FUSE_NAME_MAX, FUSE_ROOT_ID, VFS_OPEN_FLAGS, Opcode
from dissectors.opcodes import ENDINGS

from ..target.layout import NODEID_AT, U64, Field
from ..target.live import LiveServer

NAME_MAX = os.pathconf("/", "PC_NAME_MAX")
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
NEVER = 1 << 40  # a node id or handle no server hands out in a session this short
_AMOUNTS = frozenset({"size", "len", "length", "out_size", "in_size"})
_FILLER = b"abcdefghijklmnopqrstuvwxyz0123456789_-"


class Timing:
    """How a try is sent, beside what it is."""

    PLAIN = "plain"
    OVERLAP = "overlap"  # another request sent before this one's reply is read
    INTERRUPT = "interrupt"  # its INTERRUPT sent right after it


Apply = Callable[[bytearray, LiveServer, random.Random], bytearray]


@dataclass(frozen=True)
class Mutation:
    label: str
    apply: Apply
    timing: str = Timing.PLAIN


def _same(raw: bytearray, live: LiveServer, rng: random.Random) -> bytearray:
    return raw


def _filled(n: int, rng: random.Random) -> bytes:
    return bytes(rng.choice(_FILLER) for _ in range(n)) if n < 64 else (
        bytes(rng.choice(_FILLER) for _ in range(8)) * (n // 8) + b"z" * (n % 8))


def _with_name(raw: bytearray, at: int, which: int, name: bytes) -> bytearray:
    """The request with its `which`-th NUL-terminated name (from `at`) replaced."""
    names = bytes(raw[at:]).split(b"\0")
    if len(names) <= which:
        return raw
    names[which] = name
    return bytearray(raw[:at]) + b"\0".join(names)


def _node_choice(live: LiveServer, now: int, rng: random.Random) -> int:
    """Another node the kernel holds, of the same type as `now` (the kernel sends OPEN
    only for regular files, READLINK only for symlinks …); `now` when none is known."""
    kind = live.types.get(now)
    same = [n for n in live.lookups if live.types.get(n) == kind]
    if kind == live.types.get(FUSE_ROOT_ID):
        same.append(FUSE_ROOT_ID)
    return rng.choice(same) if kind is not None and same else now


def _fh_choice(live: LiveServer, opcode: int, rng: random.Random) -> int | None:
    fhs = live.handles(opcode)
    return rng.choice(fhs) if fhs else None


def _put(at: int, st: struct.Struct, value: int) -> Apply:
    def apply(raw: bytearray, live: LiveServer, rng: random.Random) -> bytearray:
        if len(raw) >= at + st.size:
            st.pack_into(raw, at, value & ((1 << (8 * st.size)) - 1))
        return raw
    return apply


def _set_bit(f: Field, bit: int) -> Apply:
    def apply(raw: bytearray, live: LiveServer, rng: random.Random) -> bytearray:
        if len(raw) >= f.at + f.st.size:
            f.st.pack_into(raw, f.at, f.st.unpack_from(raw, f.at)[0] | bit)
        return raw
    return apply


def _field_values(f: Field, rng: random.Random, hostile: bool) -> list[tuple[str, int]]:
    """Boundary values of an integer field. Amounts of data (size, len) the kernel bounds
    by max_read/max_write/max_pages: only up to 2^16 unless hostile; offsets up to the
    largest loff_t, which the kernel does send."""
    bits = 8 * f.st.size
    top = (1 << bits) - 1
    amount = f.name in _AMOUNTS
    out = [("0", 0), ("1", 1)]
    if hostile or not f.flags:  # a flag word gets the bits it names (see `mutations`)
        flip = rng.randrange(17 if amount and not hostile else bits)
        out.append((f"bit {flip}", 1 << flip))
    if "off" in f.name and bits == 64:
        out.append(("largest offset", top >> 1))
    if hostile:
        out += [("max", top), ("sign bit", 1 << (bits - 1))]
    return out


def mutations(opcode: int, raw: bytearray, live: LiveServer, rng: random.Random,
              hostile: bool = False) -> list[Mutation]:
    """The mutations that make sense for this request (`raw`: as the live session
    would send it), each described."""
    layout = live.layout
    out = [Mutation("as recorded", _same)]
    if opcode not in ENDINGS:
        out += [Mutation("overlapped with another request", _same, Timing.OVERLAP),
                Mutation("interrupted at once", _same, Timing.INTERRUPT)]
    for at, _ in layout.node_words(opcode, raw):
        def node(r: bytearray, lv: LiveServer, g: random.Random, a: int = at) -> bytearray:
            return _put(a, U64, _node_choice(lv, U64.unpack_from(r, a)[0], g))(r, lv, g)
        out.append(Mutation(f"node id at {at}: another live node of its type", node))
        if hostile:
            for what, value in (("0", 0), ("never handed out", NEVER)):
                out.append(Mutation(f"node id at {at}: {what}", _put(at, U64, value)))
            if live.gone_nodes:
                out.append(Mutation(f"node id at {at}: forgotten",
                                    _put(at, U64, rng.choice(live.gone_nodes))))
    for at, _ in layout.fh_words(opcode, raw):
        def other(r: bytearray, lv: LiveServer, g: random.Random, a: int = at) -> bytearray:
            fh = _fh_choice(lv, opcode, g)
            return r if fh is None else _put(a, U64, fh)(r, lv, g)
        out.append(Mutation(f"handle at {at}: another open one", other))
        if hostile:
            for what, value in (("0", 0), ("never handed out", NEVER)):
                out.append(Mutation(f"handle at {at}: {what}", _put(at, U64, value)))
            if live.gone_fhs:
                out.append(Mutation(f"handle at {at}: released",
                                    _put(at, U64, rng.choice(live.gone_fhs))))
    named = layout.names.get(opcode)
    if named is not None:
        at, count = named
        for which in range(count):
            lengths = [1, NAME_MAX, NAME_MAX + 1, FUSE_NAME_MAX]
            if opcode == Opcode.SYMLINK and which == 1:
                lengths.append(PATH_MAX - 1)  # a target: strlen + 1 <= PATH_MAX
            names = [(f"{n} bytes", _filled(n, rng)) for n in lengths]
            names.append(("not UTF-8", b"\xff\xfe\x80" + _filled(rng.randrange(1, 16), rng)))
            if hostile:
                names += [("empty", b""), ("'.'", b"."), ("'..'", b".."), ("with '/'", b"a/b"),
                          (f"{FUSE_NAME_MAX + 1} bytes", _filled(FUSE_NAME_MAX + 1, rng))]
            for what, name in names:
                out.append(Mutation(f"name {which + 1}: {what}",
                                    lambda r, lv, g, n=name, w=which: _with_name(r, at, w, n)))
    for f in layout.fields.get(opcode, ()) if hostile or opcode != Opcode.FORGET else ():
        for what, value in _field_values(f, rng, hostile):
            out.append(Mutation(f"{f.name} = {what}", _put(f.at, f.st, value)))
        for bit in f.flags:  # each flag the dissectors name, added to what was sent
            if hostile or not (f.open_flags and bit & VFS_OPEN_FLAGS):
                out.append(Mutation(f"{f.name} |= {bit:#x}", _set_bit(f, bit)))
    if opcode == Opcode.FORGET:
        def exact(r: bytearray, lv: LiveServer, g: random.Random) -> bytearray:
            if not lv.lookups:
                return r
            node = g.choice(list(lv.lookups))
            U64.pack_into(r, NODEID_AT, node)
            return _put(layout.fields[opcode][0].at, U64, lv.lookups[node])(r, lv, g)
        out.append(Mutation("forget all lookups of a live node", exact))
    return out
