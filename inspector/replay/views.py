"""Messages as lists of named fields, for comparing two replies and rewriting a request.

Built on the dissectors' struct-only fast path (`dissectors.quick`): a reply's fixed
structs come out of one `struct.unpack` each, and only the variable tail (names, file
data, directory entries) is walked here. Full Scapy decoding would cost about a
millisecond per message, which a 100,000-request replay cannot afford; the field names
and offsets are still the dissectors' own (`compiled()` flattens the same Scapy classes).

Every field carries a *kind*: PLAIN values are compared as they are; NODE, FH, BACKING and
DIROFF values are chosen by the server and compared through the replay's translation.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from dissectors.constants import IN_HEADER_SIZE, OUT_HEADER_SIZE, Opcode
from dissectors.fields import errno_name
from dissectors.quick import Brief, Compiled, compiled
from dissectors.structs import (
    FuseCopyFileRangeIn,
    FuseEntryOut,
    FuseEntryOutCompat,
    FuseFallocateIn,
    FuseFlushIn,
    FuseFsyncIn,
    FuseGetattrIn,
    FuseIoctlIn,
    FuseLinkIn,
    FuseLkIn,
    FuseLseekIn,
    FuseNotifyDeleteOut,
    FuseNotifyInvalEntryOut,
    FuseNotifyInvalInodeOut,
    FuseNotifyRetrieveOut,
    FuseNotifyStoreOut,
    FuseOpenOut,
    FuseOpenOutAndroid,
    FusePollIn,
    FuseReadIn,
    FuseReadInCompat,
    FuseReleaseIn,
    FuseRename2In,
    FuseRenameIn,
    FuseSetattrIn,
    FuseSetupmappingIn,
    FuseStatxIn,
    FuseWriteIn,
    FuseWriteInCompat,
    struct_name,
)

PLAIN, NODE, FH, BACKING, DIROFF, IGNORED = range(6)
KIND_NAMES = {NODE: "node id", FH: "file handle", BACKING: "backing id", DIROFF: "directory offset"}

Formatter = Callable[[Any], str] | None

#: Server-chosen fields of reply and notification structs.
_REPLY_KINDS: dict[type, dict[str, int]] = {
    FuseEntryOut: {"nodeid": NODE}, FuseEntryOutCompat: {"nodeid": NODE},
    FuseOpenOut: {"fh": FH, "backing_id": BACKING},
    FuseOpenOutAndroid: {"fh": FH, "passthrough_fh": BACKING},
    FuseNotifyInvalInodeOut: {"ino": NODE}, FuseNotifyInvalEntryOut: {"parent": NODE},
    FuseNotifyDeleteOut: {"parent": NODE, "child": NODE}, FuseNotifyStoreOut: {"nodeid": NODE},
    FuseNotifyRetrieveOut: {"nodeid": NODE, "notify_unique": IGNORED},
}
#: Fields of request structs that carry a value the server chose earlier.
_REQUEST_KINDS: dict[type, dict[str, int]] = {
    **{cls: {"fh": FH} for cls in (
        FuseGetattrIn, FuseSetattrIn, FuseReadIn, FuseReadInCompat, FuseWriteIn, FuseWriteInCompat,
        FuseReleaseIn, FuseFlushIn, FuseFsyncIn, FuseLkIn, FuseIoctlIn, FusePollIn,
        FuseFallocateIn, FuseLseekIn, FuseSetupmappingIn, FuseStatxIn)},
    FuseCopyFileRangeIn: {"fh_in": FH, "fh_out": FH, "nodeid_out": NODE},
    FuseRenameIn: {"newdir": NODE}, FuseRename2In: {"newdir": NODE}, FuseLinkIn: {"oldnodeid": NODE},
}
_DIR_READS = frozenset({Opcode.READDIR, Opcode.READDIRPLUS})
_TOKEN = re.compile(r"(\d*)([a-zA-Z?])")
_DIRENT = struct.Struct("<QQII")  # fuse_dirent without its name
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One struct class as the replay sees it: dotted paths, kinds, formatters, offsets."""

    comp: Compiled
    paths: tuple[str, ...]
    kinds: tuple[int, ...]
    offsets: tuple[int, ...]
    special: tuple[int, ...]  # indices whose kind is not PLAIN

    @property
    def size(self) -> int:
        return self.comp.st.size


def _offsets(comp: Compiled) -> tuple[int, ...]:
    out, at = [], 0
    for count, code in _TOKEN.findall(comp.st.format.lstrip("<")):
        out.append(at)
        at += struct.calcsize("<" + count + code)
    return tuple(out)


@lru_cache(maxsize=None)
def layer_spec(comp: Compiled, request: bool) -> LayerSpec:
    table = (_REQUEST_KINDS if request else _REPLY_KINDS).get(comp.cls, {})
    prefix = struct_name(comp.cls)
    kinds = tuple(table.get(name, PLAIN) for name in comp.names)
    return LayerSpec(comp, tuple(f"{prefix}.{name}" for name in comp.names), kinds,
                     _offsets(comp), tuple(i for i, k in enumerate(kinds) if k != PLAIN))


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
            out += [(spec.paths[i], v, spec.kinds[i], spec.comp.formatters[i])
                    for i, v in enumerate(values)]
        return out + self.tail


def _errno_text(value: int) -> str:
    return f"{value} ({errno_name(value)})" if value < 0 else str(value)


def reply_view(raw: bytes, brief: Brief, true_len: int | None = None) -> ReplyView:
    """`brief`: the message's fast decode; `true_len`: its length as sent, when the
    recorded bytes were cut."""
    layers = [(layer_spec(comp, False), values) for comp, values in brief.layers]
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
    entry = layer_spec(compiled(FuseEntryOut), False) if plus else None
    k = 0
    while True:
        at = off + (entry.size if entry else 0)
        if at + _DIRENT.size > end:
            break
        ino, doff, namelen, dtype = _DIRENT.unpack_from(raw, at)
        stop = at + ((_DIRENT.size + namelen + 7) & ~7)
        if stop > end:
            break
        base = f"direntplus[{k}]" if plus else f"dirent[{k}]"
        if entry is not None:
            values = entry.comp.st.unpack_from(raw, off)
            items += [(f"{base}.entry_out.{name}", v, entry.kinds[i], entry.comp.formatters[i])
                      for i, (name, v) in enumerate(zip(entry.comp.names, values))]
        items += [(f"{base}.ino", ino, PLAIN, None), (f"{base}.off", doff, DIROFF, None),
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


_FORGET_ONE = struct.Struct("<QQ")


def request_view(raw: bytes, brief: Brief) -> RequestView:
    slots: list[tuple[int, int, int]] = []
    if brief.opcode not in (None, Opcode.INIT) and len(raw) >= IN_HEADER_SIZE:
        slots.append((16, NODE, brief.nodeid))  # fuse_in_header.nodeid
    at = IN_HEADER_SIZE
    for comp, values in brief.layers:
        spec = layer_spec(comp, True)
        for i in spec.special:
            slots.append((at + spec.offsets[i], spec.kinds[i], values[i]))
        if brief.opcode in _DIR_READS and comp.cls in (FuseReadIn, FuseReadInCompat):
            slots.append((at + spec.offsets[comp.index["offset"]], DIROFF, values[comp.index["offset"]]))
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
