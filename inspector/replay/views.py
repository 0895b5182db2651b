"""Messages as lists of named fields, for comparing two replies and rewriting a request.

Built on the dissectors' struct-only fast path (`dissectors.quick`): a reply's fixed
structs come out of one `struct.unpack` each, and only the variable tail (names, file
data, directory entries) is walked here. Full Scapy decoding would cost about a
millisecond per message, which a 100,000-request replay cannot afford; the field names
and offsets are still the dissectors' own (`compiled()` flattens the same Scapy classes).

Every field carries a *kind*: PLAIN values are compared as they are; NODE, FH, BACKING and
DIROFF values are chosen by the server and compared through the replay's translation.
Which fields those are, and under which condition (GETATTR's fh only with
FUSE_GETATTR_FH …), comes from the one table of ids, `dissectors.ids`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from dissectors.constants import Opcode
from dissectors.fields import errno_name
from dissectors.flat import Compiled, compiled
from dissectors.ids import Id, IdField, id_fields
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, field_offsets, reader
from dissectors.quick import Brief
from dissectors.structs import (
    FuseDirent,
    FuseEntryOut,
    FuseForgetOne,
    FuseInHeader,
    FuseNotifyRetrieveOut,
    dirent_size,
    struct_name,
)

PLAIN, NODE, FH, BACKING, DIROFF, IGNORED = range(6)

Formatter = Callable[[Any], str] | None

#: How the replay treats each kind of id of `dissectors.ids` (kernel-chosen ones are not
#: compared in requests and never appear in replies).
_VIEW_KIND = {Id.NODE: NODE, Id.FH: FH, Id.BACKING: BACKING, Id.DIROFF: DIROFF}
#: Not compared at all: RETRIEVE's unique is the server's, and NOTIFY_REPLY's is not translated.
_UNCOMPARED = {(FuseNotifyRetrieveOut, "notify_unique")}
_DIRENT = reader(FuseDirent, "ino", "off", "namelen", "type")  # without its name
_DIRENT_OFF_KIND = _VIEW_KIND[next(f.kind for f in id_fields(FuseDirent) if f.field == "off")]
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One struct class as the replay sees it: dotted paths, kinds, formatters, offsets."""

    comp: Compiled
    paths: tuple[str, ...]
    kinds: tuple[int, ...]  # when every condition of `dissectors.ids` holds
    offsets: tuple[int, ...]
    special: tuple[int, ...]  # indices whose kind is not PLAIN
    conds: tuple[tuple[int, IdField], ...]  # indices that are ids only under a condition

    def kinds_for(self, opcode: int | None, values: tuple[Any, ...]) -> tuple[int, ...]:
        """The kinds in one message: a conditional id whose condition fails is PLAIN."""
        if not self.conds:
            return self.kinds
        kinds = list(self.kinds)
        for i, idf in self.conds:
            flags = {idf.when[0]: values[self.comp.index[idf.when[0]]]} if idf.when else {}
            if not idf.applies(opcode, flags):
                kinds[i] = PLAIN
        return tuple(kinds)

    @property
    def size(self) -> int:
        return self.comp.st.size


@lru_cache(maxsize=None)
def layer_spec(comp: Compiled) -> LayerSpec:
    """A struct class's fields with the kinds `dissectors.ids` gives them."""
    table = {f.field: f for f in id_fields(comp.cls)}
    kinds = tuple(IGNORED if (comp.cls, name) in _UNCOMPARED else
                  _VIEW_KIND.get(table[name].kind, PLAIN) if name in table else PLAIN
                  for name in comp.names)
    offsets = field_offsets(comp.cls)
    conds = tuple((i, table[name]) for i, name in enumerate(comp.names)
                  if name in table and kinds[i] != PLAIN
                  and (table[name].when or table[name].opcodes is not None))
    prefix = struct_name(comp.cls)
    return LayerSpec(comp, tuple(f"{prefix}.{name}" for name in comp.names), kinds,
                     tuple(offsets[name][0] for name in comp.names),
                     tuple(i for i, k in enumerate(kinds) if k != PLAIN), conds)


# --- replies and notifications --------------------------------------------------------

Item = tuple[str, Any, int, Formatter]  # (path, value, kind, formatter)


@dataclass
class ReplyView:
    """A reply or notification: header, fixed structs, then the variable tail's items."""

    brief: Brief
    layers: list[tuple[LayerSpec, tuple[Any, ...]]]
    tail: list[Item]
    cut: bool  # the message's file data was cut by the snap length (a recorded reply)

    @property
    def error(self) -> int:
        return self.brief.error

    def items(self) -> list[Item]:
        """Every field in order, the header's error first (for showing a whole message)."""
        out: list[Item] = [("error", self.brief.error, PLAIN, _errno_text)]
        for spec, values in self.layers:
            kinds = spec.kinds_for(self.brief.opcode, values)
            out += [(spec.paths[i], v, kinds[i], spec.comp.formatters[i])
                    for i, v in enumerate(values)]
        return out + self.tail


def _errno_text(value: int) -> str:
    return f"{value} ({errno_name(value)})" if value < 0 else str(value)


def reply_view(raw: bytes, brief: Brief, true_len: int | None = None) -> ReplyView:
    """`brief`: the message's fast decode; `true_len`: its length as sent, when the
    recorded bytes were cut."""
    layers = [(layer_spec(comp), values) for comp, values in brief.layers]
    off = OUT_HEADER_SIZE + sum(spec.size for spec, _ in layers)
    end = min(brief.length, len(raw))
    tail: list[Item] = []
    for key in ("name", "name2"):
        if key in brief.extras:
            tail.append((key, bytes(brief.extras[key]), PLAIN, None))
    if "data_len" in brief.extras:
        start = end - brief.extras["data_len"]
        size = (true_len if true_len is not None else brief.length) - start
        tail += [("data.size", size, PLAIN, None), ("data", bytes(raw[start:end]), PLAIN, data_text)]
    elif "entries" in brief.extras and not brief.error:
        tail += _dirents(raw, off, end, brief.opcode == Opcode.READDIRPLUS)
    if brief.reason:
        tail.append(("undecodable", brief.reason, PLAIN, None))
    cut = true_len is not None and true_len > len(raw)
    return ReplyView(brief, layers, tail, cut)


def _dirents(raw: bytes, off: int, end: int, plus: bool) -> list[Item]:
    items: list[Item] = []
    entry = layer_spec(compiled(FuseEntryOut)) if plus else None
    k = 0
    while True:
        at = off + (entry.size if entry else 0)
        if at + _DIRENT.size > end:
            break
        ino, doff, namelen, dtype = _DIRENT.unpack_from(raw, at)
        stop = at + dirent_size(namelen)
        if stop > end:
            break
        base = f"direntplus[{k}]" if plus else f"dirent[{k}]"
        if entry is not None:
            values = entry.comp.st.unpack_from(raw, off)
            items += [(f"{base}.entry_out.{name}", v, entry.kinds[i], entry.comp.formatters[i])
                      for i, (name, v) in enumerate(zip(entry.comp.names, values))]
        items += [(f"{base}.ino", ino, PLAIN, None), (f"{base}.off", doff, _DIRENT_OFF_KIND, None),
                  (f"{base}.type", dtype, PLAIN, None),
                  (f"{base}.name", bytes(raw[at + _DIRENT.size:at + _DIRENT.size + namelen]),
                   PLAIN, None)]
        off, k = stop, k + 1
    items.append(("entries", k, PLAIN, None))
    return items


@dataclass
class Entry:
    """One directory entry of a listing: its items, all under `prefix` (`dirent[3]`)."""

    prefix: str
    position: int
    name: bytes
    items: list[Item]
    offset: int = 0  # its `off`: where a listing continues after it

    def fields(self) -> list[Item]:
        """Its items but the offset (which `Translator.learn_listing` pairs)."""
        return [item for item in self.items if item[2] != DIROFF]

    def relabelled(self, prefix: str) -> list[Item]:
        """Its fields under another entry's prefix (the entry it is paired with)."""
        cut = len(self.prefix)
        return [(prefix + path[cut:], value, kind, fmt) for path, value, kind, fmt in self.fields()]


def entries(tail: list[Item]) -> tuple[list[Entry], list[Item]]:
    """A listing's items as entries, in order, and the items that are no entry's."""
    out: list[Entry] = []
    rest: list[Item] = []
    for item in tail:
        head, dot, field = item[0].partition(".")
        if not dot or not head.startswith(("dirent[", "direntplus[")):
            rest.append(item)
            continue
        if not out or out[-1].prefix != head:
            out.append(Entry(head, len(out), b"", []))
        out[-1].items.append(item)
        if field == "name":
            out[-1].name = item[1]
        elif item[2] == DIROFF:
            out[-1].offset = item[1]
    return out, rest


def names_text(names: list[bytes], most: int = 6) -> str:
    """Entry names as a short list, for an order difference."""
    shown = ", ".join(n.decode(errors="replace") for n in names[:most])
    return shown + (f" … ({len(names)})" if len(names) > most else "")


def data_text(value: bytes) -> str:
    if len(value) <= 32:
        return repr(value)
    return f"{len(value)} bytes {value[:12].hex()}…{value[-4:].hex()}"


def show(value: Any, fmt: Formatter) -> str:
    if value is None:
        return "-"
    if fmt is not None:
        return fmt(value)
    if isinstance(value, bytes):
        return data_text(value)
    return str(value)


# --- requests -------------------------------------------------------------------------

@dataclass
class RequestView:
    """Where a request's server-chosen values sit: (byte offset, kind, value)."""

    brief: Brief
    slots: list[tuple[int, int, int]]
    forgets: list[tuple[int, int, int]]  # BATCH_FORGET: (offset of nodeid, nodeid, nlookup)


_FORGET_ONE = reader(FuseForgetOne, "nodeid", "nlookup")


def request_view(raw: bytes, brief: Brief) -> RequestView:
    slots: list[tuple[int, int, int]] = []
    if len(raw) >= IN_HEADER_SIZE:
        for idf in id_fields(FuseInHeader):
            if idf.applies(brief.opcode, {}):
                slots.append((field_offsets(FuseInHeader)[idf.field][0], _VIEW_KIND[idf.kind],
                              brief.nodeid))
    at = IN_HEADER_SIZE
    for comp, values in brief.layers:
        spec = layer_spec(comp)
        kinds = spec.kinds_for(brief.opcode, values)
        for i in spec.special:
            if kinds[i] != PLAIN:
                slots.append((at + spec.offsets[i], kinds[i], values[i]))
        at += spec.size
    forgets: list[tuple[int, int, int]] = []
    if brief.opcode == Opcode.BATCH_FORGET and brief.layers:
        count = brief.get("count") or 0
        end = min(len(raw), brief.length)
        for k in range(count):
            where = at + k * _FORGET_ONE.size
            if where + _FORGET_ONE.size > end:
                break
            nodeid, nlookup = _FORGET_ONE.unpack_from(raw, where)
            forgets.append((where, nodeid, nlookup))
    return RequestView(brief, slots, forgets)


def patch(raw: bytes, changes: list[tuple[int, int]]) -> bytes:
    """`raw` with the u64 at each offset replaced."""
    if not changes:
        return raw
    out = bytearray(raw)
    for offset, value in changes:
        _U64.pack_into(out, offset, value & 0xFFFFFFFFFFFFFFFF)
    return bytes(out)
