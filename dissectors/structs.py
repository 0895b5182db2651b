"""One Scapy `Packet` per wire struct of `include/uapi/linux/fuse.h`, in header order.

`name` is the kernel struct's name and field names are its C member names, so this file
reads beside the header. Little-endian everywhere. Fixed arrays (`unused[11]`, `spare[6]`)
are byte strings of the array's size. Structs that shrank in older minors have a `…Compat`
twin named after the size macro the kernel keeps for them.

Layers never pick what follows them by themselves: the message header owns a *plan*
(the list of layers its body holds, chosen in `layouts.py` from the opcode, the negotiated
minor and flags) and each layer asks it. A body that does not fit the plan becomes a
`FuseRaw` layer that says why.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable

from scapy.config import conf
from scapy.fields import (
    FieldListField,
    XLEIntField,
    FieldLenField,
    LEIntEnumField,
    LEIntField,
    LELongField,
    LEShortField,
    LESignedIntField,
    LESignedLongField,
    PacketField,
    PacketListField,
    StrField,
    StrFixedLenField,
    StrLenField,
    XLELongField,
)
from scapy.packet import Packet
from scapy.volatile import VolatileValue

from .constants import (
    ATTR_FLAGS,
    CUSE_INIT_FLAGS,
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_CTIME,
    FATTR_FLAGS,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FUSE_DIRENT_ALIGN,
    FOPEN_FLAGS,
    FSYNC_FLAGS,
    GETATTR_FLAGS,
    INIT_FLAGS,
    INVAL_ENTRY_FLAGS,
    IOCTL_FLAGS,
    LK_FLAGS,
    OPEN_IN_FLAGS,
    POLL_FLAGS,
    READ_FLAGS,
    RELEASE_FLAGS,
    SETUPMAPPING_FLAGS,
    SETXATTR_FLAGS,
    WRITE_FLAGS,
    Opcode,
)
from .flat import compiled
from .fields import (
    AlignPadField,
    CStringField,
    ErrnoField,
    LEFlags,
    ModeField,
    ModeShortField,
    NoteField,
    OpenFlagsField,
)

if TYPE_CHECKING:
    from .context import FuseContext

INIT_FLAGS_HI = {bit >> 32: name for bit, name in INIT_FLAGS.items() if bit >> 32}
INIT_FLAGS_LO = {bit: name for bit, name in INIT_FLAGS.items() if not bit >> 32}

#: What a plan entry may be: a layer class, or a function of the previous layer and
#: the remaining bytes that returns one (e.g. IOCTL replies depend on `flags`).
PlanEntry = "type[Packet] | Callable[[Packet, bytes], type[Packet]]"


def struct_name(cls: type[Packet]) -> str:
    """The kernel struct name of a layer class (Scapy keeps it as `_name` on classes)."""
    return getattr(cls, "_name", cls.__name__)


#: Scapy stops lists at 100 items by default (conf.max_list_count); a READDIR reply or a
#: BATCH_FORGET holds thousands. Every element is at least 8 bytes of a bounded message.
MAX_LIST_ITEMS = 1 << 20


_NOT_FIXED = object()
_packers: dict[type, Any] = {}  # class -> its compiled struct, or _NOT_FIXED


class FastBuild:
    """Builds a fixed-size struct with one `struct.pack` instead of field by field.

    Scapy's generic build costs ~1 ms for a reply like fuse_entry_out, which made a server
    answering with these classes crawl. Same bytes (tests compare both ways); anything the
    struct cannot take (a dissected packet's cached bytes, out-of-range values, variable
    fields) goes through Scapy's own path.
    """

    __slots__: list[str] = []

    def self_build(self) -> bytes:
        if self.raw_packet_cache is None:  # type: ignore[attr-defined]
            packer = _packers.get(type(self))
            if packer is None:
                packer = _packers[type(self)] = _packer_for(type(self))
            if packer is not _NOT_FIXED:
                try:
                    return packer.st.pack(*_flat_values(self))
                except (struct.error, TypeError, ValueError):
                    pass
        return super().self_build()  # type: ignore[misc]

    def do_build(self) -> bytes:
        """Scapy's do_build, minus the copy it makes to resolve random (volatile) values
        when there are none: that copy was most of the cost of building a reply."""
        fields = self.fields  # type: ignore[attr-defined]
        if not self.explicit and any(isinstance(v, VolatileValue) for v in fields.values()):  # type: ignore[attr-defined]
            return super().do_build()  # type: ignore[misc]
        pkt = self.self_build()
        for transform in self.post_transforms:  # type: ignore[attr-defined]
            pkt = transform(pkt)
        pay = self.do_build_payload()  # type: ignore[attr-defined]
        if self.raw_packet_cache is None:  # type: ignore[attr-defined]
            return self.post_build(pkt, pay)  # type: ignore[attr-defined]
        return pkt + pay


def _packer_for(cls: type) -> Any:
    try:
        return compiled(cls)
    except TypeError:
        return _NOT_FIXED


def _flat_values(pkt: Packet) -> list[Any]:
    values: list[Any] = []
    for fld in pkt.fields_desc:
        value = pkt.getfieldval(fld.name)
        if isinstance(fld, PacketField):
            values += _flat_values(value if value is not None else fld.cls())
        elif isinstance(value, bytes):
            values.append(value)
        else:
            values.append(0 if value is None else int(value))
    return values


class FuseLayer(FastBuild, Packet):
    """Base of every FUSE layer: asks the message header's plan what comes next."""

    __slots__ = ["note"]  # why the rest of the body is raw, found while dissecting a list

    def post_dissect(self, s: bytes) -> bytes:
        """A list that ends in a cut element, or holds fewer than its count, says so.

        Scapy turns an element that fails to dissect into a bare `Raw` item; its bytes go
        back to the body so they end up in a `FuseRaw` layer with the reason.
        """
        for fld in self.fields_desc:
            if not isinstance(fld, (PacketListField, FieldListField)):
                continue
            items = self.getfieldval(fld.name)
            if items and isinstance(items[-1], conf.raw_layer):
                cut = items.pop()
                s = cut.load + s
                object.__setattr__(self, "note", f"{len(cut.load)} bytes of an incomplete "
                                                 f"{struct_name(fld.cls)}")
                continue
            count = fld.count_from(self) if fld.count_from is not None else None
            if count is not None and len(items) < count:
                object.__setattr__(self, "note", f"count is {count}, the body holds {len(items)}")
        return s

    def do_dissect_payload(self, s: bytes) -> None:
        note = getattr(self, "note", None)
        if note:  # even with no bytes left: the reason must show
            layer = FuseRaw(s, _internal=1, _underlayer=self)
            layer.setfieldval("reason", note)
            self.add_payload(layer)
            return
        if not s:
            if isinstance(self, FuseHeader) and type(self).planner is not None:
                # An empty body can be wrong too (a GETATTR reply needs fuse_attr_out).
                plan, reason = type(self).planner(self, s)
                object.__setattr__(self, "plan", plan)
                if reason:
                    layer = FuseRaw(b"", _internal=1, _underlayer=self)
                    layer.setfieldval("reason", reason)
                    self.add_payload(layer)
            return
        owner, depth = self, 0
        while not isinstance(owner, FuseHeader) and owner.underlayer is not None:
            owner, depth = owner.underlayer, depth + 1
        cls, reason = owner.next_layer(depth, self, s) if isinstance(owner, FuseHeader) else (
            FuseRaw, "layer dissected outside a FUSE message")
        try:
            layer = cls(s, _internal=1, _underlayer=self)
        except Exception as exc:  # a malformed body must never escape as an exception
            layer, reason = FuseRaw(s, _internal=1, _underlayer=self), f"{struct_name(cls)}: {exc}"
        if reason:
            layer.setfieldval("reason", reason)
        self.add_payload(layer)

    def copy(self) -> "FuseLayer":
        """Scapy's copy drops our slots (`note`, `missing_nul`, a header's `ctx`): keep them."""
        clone = super().copy()
        for attr in type(self).__all_slots__ - set(Packet.__slots__):
            if hasattr(self, attr):
                object.__setattr__(clone, attr, getattr(self, attr))
        return clone

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        if self.underlayer is None and self.parent is not None:
            # Nested in a PacketField (fuse_direntplus.entry_out): the rest is the parent's.
            return b"", s
        return s, b""


class FuseStruct(FuseLayer):
    """A fixed-size kernel struct inside a message body."""


class FuseElement(FastBuild, Packet):
    """A struct repeated in a list (dirents, forget_one …): hands the rest to the next.

    An element cut short raises, so the list shows it as incomplete instead of filling the
    missing fields with defaults (Scapy stops quietly when the bytes run out).
    """

    def do_dissect(self, s: bytes) -> bytes:
        need = _min_size(type(self))
        if len(s) < need:
            raise ValueError(f"{struct_name(type(self))} needs {need} bytes, got {len(s)}")
        rest = super().do_dissect(s)
        want = self.wire_size()
        if want is not None and len(s) - len(rest) != want:
            raise ValueError(f"{struct_name(type(self))} of {want} bytes cut at {len(s) - len(rest)}")
        return rest

    def wire_size(self) -> int | None:
        """The size this element claims (variable elements), to catch a cut tail."""
        return None

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


_MIN_SIZES: dict[type, int] = {}


def _min_size(cls: type[Packet]) -> int:
    """Bytes of the element built from its defaults: its fixed part."""
    if cls not in _MIN_SIZES:
        _MIN_SIZES[cls] = len(bytes(cls()))
    return _MIN_SIZES[cls]


class FuseRaw(FuseLayer):
    """Bytes the decoder could not place, with the reason; never a guess shown as fact."""

    name = "raw"
    fields_desc = [NoteField("reason", b""), StrField("load", b"")]

    def mysummary(self) -> str:
        reason = self.reason.decode() if isinstance(self.reason, bytes) else self.reason
        return f"raw {len(self.load)} bytes ({reason})"


class FuseHeader(FuseLayer):
    """A message header: owns the context and the plan of the body that follows it."""

    __slots__ = ["ctx", "plan"]

    def __init__(self, _pkt: bytes = b"", *args: Any, ctx: "FuseContext | None" = None,
                 **kwargs: Any) -> None:
        object.__setattr__(self, "ctx", ctx)
        object.__setattr__(self, "plan", [])
        super().__init__(_pkt, *args, **kwargs)

    #: Filled by `layouts.py`: (header, body bytes) → (plan, reason when the plan is raw).
    planner: "Callable[[FuseHeader, bytes], tuple[list[Any], str]] | None" = None
    #: Filled by `summary.py`: the message's one-line text (`summary()`).
    liner: "Callable[[FuseHeader], str] | None" = None

    def summary(self, intern: int = 0) -> str:
        return type(self).liner(self) if type(self).liner else super().summary(intern)

    def next_layer(self, depth: int, prev: Packet, s: bytes) -> tuple[type[Packet], str]:
        if depth == 0:
            plan, reason = type(self).planner(self, s) if type(self).planner else ([], "")
            object.__setattr__(self, "plan", plan)
            if reason:
                return FuseRaw, reason
        if depth >= len(self.plan):
            return FuseRaw, f"{len(s)} unexpected bytes after {prev.name}"
        entry = self.plan[depth]
        cls = entry if isinstance(entry, type) else entry(prev, s)
        return (cls, "") if isinstance(cls, type) else (FuseRaw, str(cls))

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        body = max(self.len - len(self.original) + len(s), 0) if self.len else len(s)
        return s[:body], s[body:]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.len is None:
            p = (len(p) + len(pay)).to_bytes(4, "little") + p[4:]
        return p + pay

    def copy(self) -> "FuseHeader":
        clone = super().copy()
        object.__setattr__(clone, "ctx", self.ctx)
        return clone


# --- struct fuse_in_header / fuse_out_header ---------------------------------------

class FuseInHeader(FuseHeader):
    """kernel → server: every request starts with this."""

    name = "fuse_in_header"
    fields_desc = [
        LEIntField("len", None),
        LEIntEnumField("opcode", 0, {op.value: op.name for op in Opcode}),
        LELongField("unique", 0),
        LELongField("nodeid", 0),
        LEIntField("uid", 0),
        LEIntField("gid", 0),
        LEIntField("pid", 0),
        LEShortField("total_extlen", 0),  # 7.38: extensions' length in 8-byte units
        LEShortField("padding", 0),
    ]

    def hashret(self) -> bytes:
        return self.unique.to_bytes(8, "little")


class FuseOutHeader(FuseHeader):
    """server → kernel: replies (unique ≠ 0) and notifications (unique = 0, error = code)."""

    name = "fuse_out_header"
    fields_desc = [
        LEIntField("len", None),
        ErrnoField("error", 0),
        LELongField("unique", 0),
    ]

    def hashret(self) -> bytes:
        return self.unique.to_bytes(8, "little")

    def answers(self, other: Packet) -> bool:
        return isinstance(other, FuseInHeader) and other.unique == self.unique


# --- attributes and their relatives --------------------------------------------------

class FuseAttr(FuseElement):
    name = "fuse_attr"
    fields_desc = [
        LELongField("ino", 0),
        LELongField("size", 0),
        LELongField("blocks", 0),
        LELongField("atime", 0),
        LELongField("mtime", 0),
        LELongField("ctime", 0),
        LEIntField("atimensec", 0),
        LEIntField("mtimensec", 0),
        LEIntField("ctimensec", 0),
        ModeField("mode", 0),
        LEIntField("nlink", 0),
        LEIntField("uid", 0),
        LEIntField("gid", 0),
        LEIntField("rdev", 0),
        LEIntField("blksize", 0),  # 7.9
        LEFlags("flags", 0, 32, ATTR_FLAGS),  # 7.32 (was padding)
    ]

    def mysummary(self) -> str:
        return self.sprintf("ino=%ino% size=%size% mode=%mode%")


class FuseAttrCompat(FuseElement):
    """fuse_attr before 7.9: no blksize, no padding (FUSE_COMPAT_ATTR_OUT_SIZE)."""

    name = "fuse_attr (7.8)"
    fields_desc = FuseAttr.fields_desc[:-2]


class FuseSxTime(FuseElement):
    name = "fuse_sx_time"
    fields_desc = [
        LESignedLongField("tv_sec", 0),
        LEIntField("tv_nsec", 0),
        LESignedIntField("__reserved", 0),
    ]


class FuseStatx(FuseElement):
    """7.39: bit-for-bit the statx(2) ABI."""

    name = "fuse_statx"
    fields_desc = [
        LEIntField("mask", 0),
        LEIntField("blksize", 0),
        LELongField("attributes", 0),
        LEIntField("nlink", 0),
        LEIntField("uid", 0),
        LEIntField("gid", 0),
        ModeShortField("mode", 0),
        StrFixedLenField("__spare0", b"", 2),
        LELongField("ino", 0),
        LELongField("size", 0),
        LELongField("blocks", 0),
        LELongField("attributes_mask", 0),
        PacketField("atime", FuseSxTime(), FuseSxTime),
        PacketField("btime", FuseSxTime(), FuseSxTime),
        PacketField("ctime", FuseSxTime(), FuseSxTime),
        PacketField("mtime", FuseSxTime(), FuseSxTime),
        LEIntField("rdev_major", 0),
        LEIntField("rdev_minor", 0),
        LEIntField("dev_major", 0),
        LEIntField("dev_minor", 0),
        StrFixedLenField("__spare2", b"", 112),
    ]


class FuseKstatfs(FuseElement):
    name = "fuse_kstatfs"
    fields_desc = [
        LELongField("blocks", 0),
        LELongField("bfree", 0),
        LELongField("bavail", 0),
        LELongField("files", 0),
        LELongField("ffree", 0),
        LEIntField("bsize", 0),
        LEIntField("namelen", 0),
        LEIntField("frsize", 0),  # 7.4
        LEIntField("padding", 0),
        StrFixedLenField("spare", b"", 24),
    ]


class FuseKstatfsCompat(FuseElement):
    """fuse_kstatfs before 7.4 (FUSE_COMPAT_STATFS_SIZE)."""

    name = "fuse_kstatfs (7.3)"
    fields_desc = FuseKstatfs.fields_desc[:7]


class FuseFileLock(FuseElement):
    name = "fuse_file_lock"
    fields_desc = [
        LELongField("start", 0),
        LELongField("end", 0),
        LEIntField("type", 0),
        LEIntField("pid", 0),  # tgid
    ]


# --- request and reply bodies, in header order ----------------------------------------

class FuseEntryOut(FuseStruct):
    name = "fuse_entry_out"
    fields_desc = [
        LELongField("nodeid", 0),
        LELongField("generation", 0),
        LELongField("entry_valid", 0),
        LELongField("attr_valid", 0),
        LEIntField("entry_valid_nsec", 0),
        LEIntField("attr_valid_nsec", 0),
        PacketField("attr", FuseAttr(), FuseAttr),
    ]


class FuseEntryOutCompat(FuseStruct):
    """fuse_entry_out before 7.9 (FUSE_COMPAT_ENTRY_OUT_SIZE)."""

    name = "fuse_entry_out (7.8)"
    fields_desc = FuseEntryOut.fields_desc[:-1] + [
        PacketField("attr", FuseAttrCompat(), FuseAttrCompat)]


class FuseForgetIn(FuseStruct):
    name = "fuse_forget_in"
    fields_desc = [LELongField("nlookup", 0)]


class FuseForgetOne(FuseElement):
    name = "fuse_forget_one"
    fields_desc = [LELongField("nodeid", 0), LELongField("nlookup", 0)]


class FuseBatchForgetIn(FuseStruct):
    name = "fuse_batch_forget_in"
    fields_desc = [LEIntField("count", None), LEIntField("dummy", 0)]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.count is None and isinstance(self.payload, FuseForgetList):
            p = len(self.payload.forgets).to_bytes(4, "little") + p[4:]
        return p + pay


class FuseGetattrIn(FuseStruct):
    name = "fuse_getattr_in"
    fields_desc = [
        LEFlags("getattr_flags", 0, 32, GETATTR_FLAGS),
        LEIntField("dummy", 0),
        XLELongField("fh", 0),
    ]


class FuseAttrOut(FuseStruct):
    name = "fuse_attr_out"
    fields_desc = [
        LELongField("attr_valid", 0),
        LEIntField("attr_valid_nsec", 0),
        LEIntField("dummy", 0),
        PacketField("attr", FuseAttr(), FuseAttr),
    ]


class FuseAttrOutCompat(FuseStruct):
    """fuse_attr_out before 7.9 (FUSE_COMPAT_ATTR_OUT_SIZE)."""

    name = "fuse_attr_out (7.8)"
    fields_desc = FuseAttrOut.fields_desc[:-1] + [
        PacketField("attr", FuseAttrCompat(), FuseAttrCompat)]


class FuseStatxIn(FuseStruct):
    name = "fuse_statx_in"
    fields_desc = [
        LEFlags("getattr_flags", 0, 32, GETATTR_FLAGS),
        LEIntField("reserved", 0),
        XLELongField("fh", 0),
        LEIntField("sx_flags", 0),
        LEIntField("sx_mask", 0),
    ]


class FuseStatxOut(FuseStruct):
    name = "fuse_statx_out"
    fields_desc = [
        LELongField("attr_valid", 0),
        LEIntField("attr_valid_nsec", 0),
        LEIntField("flags", 0),
        StrFixedLenField("spare", b"", 16),
        PacketField("stat", FuseStatx(), FuseStatx),
    ]


class FuseMknodIn(FuseStruct):
    name = "fuse_mknod_in"
    fields_desc = [
        ModeField("mode", 0),
        LEIntField("rdev", 0),
        LEIntField("umask", 0),  # 7.12
        LEIntField("padding", 0),
    ]


class FuseMknodInCompat(FuseStruct):
    """fuse_mknod_in before 7.12 (FUSE_COMPAT_MKNOD_IN_SIZE)."""

    name = "fuse_mknod_in (7.11)"
    fields_desc = FuseMknodIn.fields_desc[:2]


class FuseMkdirIn(FuseStruct):
    name = "fuse_mkdir_in"
    fields_desc = [ModeField("mode", 0), LEIntField("umask", 0)]


class FuseRenameIn(FuseStruct):
    name = "fuse_rename_in"
    fields_desc = [LELongField("newdir", 0)]


class FuseRename2In(FuseStruct):
    name = "fuse_rename2_in"
    fields_desc = [LELongField("newdir", 0), LEIntField("flags", 0), LEIntField("padding", 0)]


class FuseLinkIn(FuseStruct):
    name = "fuse_link_in"
    fields_desc = [LELongField("oldnodeid", 0)]


class FuseSetattrIn(FuseStruct):
    name = "fuse_setattr_in"
    fields_desc = [
        LEFlags("valid", 0, 32, FATTR_FLAGS),
        LEIntField("padding", 0),
        XLELongField("fh", 0),
        LELongField("size", 0),
        XLELongField("lock_owner", 0),
        LELongField("atime", 0),
        LELongField("mtime", 0),
        LELongField("ctime", 0),
        LEIntField("atimensec", 0),
        LEIntField("mtimensec", 0),
        LEIntField("ctimensec", 0),
        ModeField("mode", 0),
        LEIntField("unused4", 0),
        LEIntField("uid", 0),
        LEIntField("gid", 0),
        LEIntField("unused5", 0),
    ]


#: The `valid` bit under which the kernel fills in each value of fuse_setattr_in (its ids,
#: fh and lock_owner, are in `dissectors.ids`).
SETATTR_VALID: dict[str, int] = {
    "mode": FATTR_MODE, "uid": FATTR_UID, "gid": FATTR_GID, "size": FATTR_SIZE,
    "atime": FATTR_ATIME, "atimensec": FATTR_ATIME, "mtime": FATTR_MTIME,
    "mtimensec": FATTR_MTIME, "ctime": FATTR_CTIME, "ctimensec": FATTR_CTIME,
}
#: The bits with which the kernel sets a time to its own clock ("now") whatever is sent.
SETATTR_NOW: dict[str, int] = {"atime": FATTR_ATIME_NOW, "atimensec": FATTR_ATIME_NOW,
                               "mtime": FATTR_MTIME_NOW, "mtimensec": FATTR_MTIME_NOW}


class FuseOpenIn(FuseStruct):
    name = "fuse_open_in"
    fields_desc = [
        OpenFlagsField("flags", 0),
        LEFlags("open_flags", 0, 32, OPEN_IN_FLAGS),  # 7.33 (was unused)
    ]


class FuseCreateIn(FuseStruct):
    name = "fuse_create_in"
    fields_desc = [
        OpenFlagsField("flags", 0),
        ModeField("mode", 0),
        LEIntField("umask", 0),  # 7.12
        LEFlags("open_flags", 0, 32, OPEN_IN_FLAGS),
    ]


class FuseCreateInCompat(FuseStruct):
    """fuse_create_in before 7.12: the kernel sends sizeof(fuse_open_in)."""

    name = "fuse_create_in (7.11)"
    fields_desc = FuseCreateIn.fields_desc[:2]


class FuseOpenOut(FuseStruct):
    """Mainline: `backing_id` (7.40, Linux 6.9) names the id FOPEN_PASSTHROUGH uses."""

    name = "fuse_open_out"
    fields_desc = [
        XLELongField("fh", 0),
        LEFlags("open_flags", 0, 32, FOPEN_FLAGS),
        LESignedIntField("backing_id", 0),
    ]


class FuseOpenOutAndroid(FuseStruct):
    """Android common kernels: the old padding carries `passthrough_fh`."""

    name = "fuse_open_out (android)"
    fields_desc = [
        XLELongField("fh", 0),
        LEFlags("open_flags", 0, 32, FOPEN_FLAGS),
        LEIntField("passthrough_fh", 0),
    ]


class FuseReleaseIn(FuseStruct):
    name = "fuse_release_in"
    fields_desc = [
        XLELongField("fh", 0),
        OpenFlagsField("flags", 0),
        LEFlags("release_flags", 0, 32, RELEASE_FLAGS),
        XLELongField("lock_owner", 0),  # 7.8
    ]


class FuseFlushIn(FuseStruct):
    name = "fuse_flush_in"
    fields_desc = [
        XLELongField("fh", 0),
        LEIntField("unused", 0),
        LEIntField("padding", 0),
        XLELongField("lock_owner", 0),
    ]


class FuseReadIn(FuseStruct):
    name = "fuse_read_in"
    fields_desc = [
        XLELongField("fh", 0),
        LELongField("offset", 0),
        LEIntField("size", 0),
        LEFlags("read_flags", 0, 32, READ_FLAGS),
        XLELongField("lock_owner", 0),  # 7.9
        OpenFlagsField("flags", 0),  # 7.9
        LEIntField("padding", 0),
    ]


class FuseReadInCompat(FuseStruct):
    """fuse_read_in before 7.9: 24 bytes."""

    name = "fuse_read_in (7.8)"
    fields_desc = FuseReadIn.fields_desc[:3] + [LEIntField("padding", 0)]


class FuseWriteIn(FuseStruct):
    name = "fuse_write_in"
    fields_desc = [
        XLELongField("fh", 0),
        LELongField("offset", 0),
        LEIntField("size", 0),
        LEFlags("write_flags", 0, 32, WRITE_FLAGS),
        XLELongField("lock_owner", 0),  # 7.9
        OpenFlagsField("flags", 0),  # 7.9
        LEIntField("padding", 0),
    ]


class FuseWriteInCompat(FuseStruct):
    """fuse_write_in before 7.9 (FUSE_COMPAT_WRITE_IN_SIZE)."""

    name = "fuse_write_in (7.8)"
    fields_desc = FuseWriteIn.fields_desc[:3] + [LEIntField("padding", 0)]


class FuseWriteOut(FuseStruct):
    name = "fuse_write_out"
    fields_desc = [LEIntField("size", 0), LEIntField("padding", 0)]


class FuseStatfsOut(FuseStruct):
    name = "fuse_statfs_out"
    fields_desc = [PacketField("st", FuseKstatfs(), FuseKstatfs)]


class FuseStatfsOutCompat(FuseStruct):
    """fuse_statfs_out before 7.4 (FUSE_COMPAT_STATFS_SIZE)."""

    name = "fuse_statfs_out (7.3)"
    fields_desc = [PacketField("st", FuseKstatfsCompat(), FuseKstatfsCompat)]


class FuseFsyncIn(FuseStruct):
    name = "fuse_fsync_in"
    fields_desc = [
        XLELongField("fh", 0),
        LEFlags("fsync_flags", 0, 32, FSYNC_FLAGS),
        LEIntField("padding", 0),
    ]


class FuseSetxattrIn(FuseStruct):
    """With FUSE_SETXATTR_EXT negotiated (7.33); otherwise the compat form."""

    name = "fuse_setxattr_in"
    fields_desc = [
        LEIntField("size", 0),
        LEIntField("flags", 0),  # XATTR_CREATE / XATTR_REPLACE
        LEFlags("setxattr_flags", 0, 32, SETXATTR_FLAGS),
        LEIntField("padding", 0),
    ]


class FuseSetxattrInCompat(FuseStruct):
    """fuse_setxattr_in without FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE)."""

    name = "fuse_setxattr_in (compat)"
    fields_desc = FuseSetxattrIn.fields_desc[:2]


class FuseGetxattrIn(FuseStruct):
    name = "fuse_getxattr_in"
    fields_desc = [LEIntField("size", 0), LEIntField("padding", 0)]


class FuseGetxattrOut(FuseStruct):
    name = "fuse_getxattr_out"
    fields_desc = [LEIntField("size", 0), LEIntField("padding", 0)]


class FuseLkIn(FuseStruct):
    name = "fuse_lk_in"
    fields_desc = [
        XLELongField("fh", 0),
        XLELongField("owner", 0),
        PacketField("lk", FuseFileLock(), FuseFileLock),
        LEFlags("lk_flags", 0, 32, LK_FLAGS),
        LEIntField("padding", 0),
    ]


class FuseLkOut(FuseStruct):
    name = "fuse_lk_out"
    fields_desc = [PacketField("lk", FuseFileLock(), FuseFileLock)]


class FuseAccessIn(FuseStruct):
    name = "fuse_access_in"
    fields_desc = [LEIntField("mask", 0), LEIntField("padding", 0)]


class FuseInitIn(FuseStruct):
    name = "fuse_init_in"
    fields_desc = [
        LEIntField("major", 7),
        LEIntField("minor", 45),
        LEIntField("max_readahead", 0),
        LEFlags("flags", 0, 32, INIT_FLAGS_LO),
        LEFlags("flags2", 0, 32, INIT_FLAGS_HI),  # 7.36
        StrFixedLenField("unused", b"", 44),
    ]


class FuseInitInCompat(FuseStruct):
    """fuse_init_in from kernels before 7.36: no flags2, no reserved space."""

    name = "fuse_init_in (7.35)"
    fields_desc = FuseInitIn.fields_desc[:4]


class FuseInitOut(FuseStruct):
    name = "fuse_init_out"
    fields_desc = [
        LEIntField("major", 7),
        LEIntField("minor", 45),
        LEIntField("max_readahead", 0),
        LEFlags("flags", 0, 32, INIT_FLAGS_LO),
        LEShortField("max_background", 0),
        LEShortField("congestion_threshold", 0),
        LEIntField("max_write", 0),
        LEIntField("time_gran", 0),  # 7.23
        LEShortField("max_pages", 0),  # 7.28
        LEShortField("map_alignment", 0),  # 7.31
        LEFlags("flags2", 0, 32, INIT_FLAGS_HI),  # 7.36
        LEIntField("max_stack_depth", 0),  # 7.40
        LEShortField("request_timeout", 0),  # 7.43
        StrFixedLenField("unused", b"", 22),
    ]


class FuseInitOutCompat22(FuseStruct):
    """fuse_init_out before 7.23 (FUSE_COMPAT_22_INIT_OUT_SIZE)."""

    name = "fuse_init_out (7.22)"
    fields_desc = FuseInitOut.fields_desc[:7]


class FuseInitOutCompat(FuseStruct):
    """fuse_init_out before 7.5 (FUSE_COMPAT_INIT_OUT_SIZE)."""

    name = "fuse_init_out (7.4)"
    fields_desc = FuseInitOut.fields_desc[:2]


class CuseInitIn(FuseStruct):
    name = "cuse_init_in"
    fields_desc = [
        LEIntField("major", 7),
        LEIntField("minor", 45),
        LEIntField("unused", 0),
        LEFlags("flags", 0, 32, CUSE_INIT_FLAGS),
    ]


class CuseInitOut(FuseStruct):
    name = "cuse_init_out"
    fields_desc = [
        LEIntField("major", 7),
        LEIntField("minor", 45),
        LEIntField("unused", 0),
        LEFlags("flags", 0, 32, CUSE_INIT_FLAGS),
        LEIntField("max_read", 0),
        LEIntField("max_write", 0),
        LEIntField("dev_major", 0),
        LEIntField("dev_minor", 0),
        StrFixedLenField("spare", b"", 40),
    ]


class FuseInterruptIn(FuseStruct):
    name = "fuse_interrupt_in"
    fields_desc = [LELongField("unique", 0)]


class FuseBmapIn(FuseStruct):
    name = "fuse_bmap_in"
    fields_desc = [LELongField("block", 0), LEIntField("blocksize", 0), LEIntField("padding", 0)]


class FuseBmapOut(FuseStruct):
    name = "fuse_bmap_out"
    fields_desc = [LELongField("block", 0)]


class FuseIoctlIn(FuseStruct):
    name = "fuse_ioctl_in"
    fields_desc = [
        XLELongField("fh", 0),
        LEFlags("flags", 0, 32, IOCTL_FLAGS),
        XLEIntField("cmd", 0),
        XLELongField("arg", 0),
        LEIntField("in_size", 0),
        LEIntField("out_size", 0),
    ]


class FuseIoctlIovec(FuseElement):
    name = "fuse_ioctl_iovec"
    fields_desc = [XLELongField("base", 0), LELongField("len", 0)]


class FuseIoctlOut(FuseStruct):
    name = "fuse_ioctl_out"
    fields_desc = [
        LESignedIntField("result", 0),
        LEFlags("flags", 0, 32, IOCTL_FLAGS),
        LEIntField("in_iovs", 0),
        LEIntField("out_iovs", 0),
    ]


class FusePollIn(FuseStruct):
    name = "fuse_poll_in"
    fields_desc = [
        XLELongField("fh", 0),
        XLELongField("kh", 0),
        LEFlags("flags", 0, 32, POLL_FLAGS),
        LEIntField("events", 0),  # 7.21 (was padding)
    ]


class FusePollOut(FuseStruct):
    name = "fuse_poll_out"
    fields_desc = [LEIntField("revents", 0), LEIntField("padding", 0)]


class FuseNotifyPollWakeupOut(FuseStruct):
    name = "fuse_notify_poll_wakeup_out"
    fields_desc = [XLELongField("kh", 0)]


class FuseFallocateIn(FuseStruct):
    name = "fuse_fallocate_in"
    fields_desc = [
        XLELongField("fh", 0),
        LELongField("offset", 0),
        LELongField("length", 0),
        LEIntField("mode", 0),
        LEIntField("padding", 0),
    ]


#: fuse_dirent's fixed part: ino, off, namelen, type (FUSE_NAME_OFFSET)
FUSE_NAME_OFFSET = 24


def dirent_size(namelen: int) -> int:
    """Bytes one fuse_dirent with a name of `namelen` bytes takes (FUSE_DIRENT_SIZE)."""
    return (FUSE_NAME_OFFSET + namelen + FUSE_DIRENT_ALIGN - 1) & ~(FUSE_DIRENT_ALIGN - 1)


class FuseDirent(FuseElement):
    """One READDIR entry; the name is padded to an 8-byte boundary (FUSE_DIRENT_ALIGN)."""

    # `_name`, not `name`: with a field called `name`, Scapy's metaclass would take a class
    # attribute `name` for that field's default. Read the
    # field with `getfieldval("name")`: `.name` is Scapy's layer-name slot.
    _name = "fuse_dirent"
    fields_desc = [
        LELongField("ino", 0),
        LELongField("off", 0),
        FieldLenField("namelen", None, length_of="name", fmt="<I"),
        LEIntField("type", 0),  # DT_* (the mode's type bits >> 12)
        StrLenField("name", b"", length_from=lambda p: p.namelen),
        AlignPadField("padding", FUSE_DIRENT_ALIGN, FUSE_NAME_OFFSET, "name"),
    ]

    def wire_size(self) -> int | None:
        return dirent_size(self.namelen) if self.namelen is not None else None

    def mysummary(self) -> str:
        return self.sprintf("%name% ino=%ino% off=%off%")


class FuseDirentplus(FuseElement):
    name = "fuse_direntplus"
    fields_desc = [
        PacketField("entry_out", FuseEntryOut(), FuseEntryOut),
        PacketField("dirent", FuseDirent(), FuseDirent),
    ]


class FuseNotifyInvalInodeOut(FuseStruct):
    name = "fuse_notify_inval_inode_out"
    fields_desc = [LELongField("ino", 0), LESignedLongField("off", 0), LESignedLongField("len", 0)]


class FuseNotifyInvalEntryOut(FuseStruct):
    name = "fuse_notify_inval_entry_out"
    fields_desc = [
        LELongField("parent", 0),
        LEIntField("namelen", None),
        LEFlags("flags", 0, 32, INVAL_ENTRY_FLAGS),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        return _fill_namelen(self, p, 8) + pay


class FuseNotifyDeleteOut(FuseStruct):
    name = "fuse_notify_delete_out"
    fields_desc = [
        LELongField("parent", 0),
        LELongField("child", 0),
        LEIntField("namelen", None),
        LEIntField("padding", 0),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        return _fill_namelen(self, p, 16) + pay


class FuseNotifyStoreOut(FuseStruct):
    name = "fuse_notify_store_out"
    fields_desc = [
        LELongField("nodeid", 0),
        LELongField("offset", 0),
        LEIntField("size", None),
        LEIntField("padding", 0),
    ]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.size is None and isinstance(self.payload, FuseData):
            p = p[:16] + len(self.payload.data).to_bytes(4, "little") + p[20:]
        return p + pay


class FuseNotifyRetrieveOut(FuseStruct):
    name = "fuse_notify_retrieve_out"
    fields_desc = [
        LELongField("notify_unique", 0),
        LELongField("nodeid", 0),
        LELongField("offset", 0),
        LEIntField("size", 0),
        LEIntField("padding", 0),
    ]


class FuseNotifyRetrieveIn(FuseStruct):
    """NOTIFY_REPLY request body: matches the size of fuse_write_in."""

    name = "fuse_notify_retrieve_in"
    fields_desc = [
        LELongField("dummy1", 0),
        LELongField("offset", 0),
        LEIntField("size", 0),
        LEIntField("dummy2", 0),
        LELongField("dummy3", 0),
        LELongField("dummy4", 0),
    ]


class FuseNotifyPruneOut(FuseStruct):
    """7.45: followed by `count` node ids."""

    name = "fuse_notify_prune_out"
    fields_desc = [LEIntField("count", None), LEIntField("padding", 0), LELongField("spare", 0)]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.count is None and isinstance(self.payload, FuseNodeidList):
            p = len(self.payload.nodeids).to_bytes(4, "little") + p[4:]
        return p + pay


class FuseLseekIn(FuseStruct):
    name = "fuse_lseek_in"
    fields_desc = [
        XLELongField("fh", 0),
        LELongField("offset", 0),
        LEIntField("whence", 0),
        LEIntField("padding", 0),
    ]


class FuseLseekOut(FuseStruct):
    name = "fuse_lseek_out"
    fields_desc = [LELongField("offset", 0)]


class FuseCopyFileRangeIn(FuseStruct):
    name = "fuse_copy_file_range_in"
    fields_desc = [
        XLELongField("fh_in", 0),
        LELongField("off_in", 0),
        LELongField("nodeid_out", 0),
        XLELongField("fh_out", 0),
        LELongField("off_out", 0),
        LELongField("len", 0),
        LELongField("flags", 0),
    ]


class FuseCopyFileRangeOut(FuseStruct):
    """7.45: the reply of FUSE_COPY_FILE_RANGE_64."""

    name = "fuse_copy_file_range_out"
    fields_desc = [LELongField("bytes_copied", 0)]


class FuseSetupmappingIn(FuseStruct):
    name = "fuse_setupmapping_in"
    fields_desc = [
        XLELongField("fh", 0),
        LELongField("foffset", 0),
        LELongField("len", 0),
        LEFlags("flags", 0, 64, SETUPMAPPING_FLAGS),
        LELongField("moffset", 0),
    ]


class FuseRemovemappingIn(FuseStruct):
    name = "fuse_removemapping_in"
    fields_desc = [LEIntField("count", None)]

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.count is None and isinstance(self.payload, FuseRemovemappingList):
            p = len(self.payload.mappings).to_bytes(4, "little") + p[4:]
        return p + pay


class FuseRemovemappingOne(FuseElement):
    name = "fuse_removemapping_one"
    fields_desc = [LELongField("moffset", 0), LELongField("len", 0)]


class FuseSyncfsIn(FuseStruct):
    name = "fuse_syncfs_in"
    fields_desc = [LELongField("padding", 0)]


class FuseSecctx(FuseElement):
    name = "fuse_secctx"
    fields_desc = [LEIntField("size", 0), LEIntField("padding", 0)]


class FuseSecctxHeader(FuseElement):
    name = "fuse_secctx_header"
    fields_desc = [LEIntField("size", 0), LEIntField("nr_secctx", 0)]


class FuseExtHeader(FuseElement):
    """7.38: one request extension; `type` ≤ 31 means a security context header."""

    name = "fuse_ext_header"
    fields_desc = [
        LEIntField("size", None),
        LEIntField("type", 0),
        StrLenField("data", b"", length_from=lambda p: max((p.size or 8) - 8, 0)),
    ]

    def wire_size(self) -> int | None:
        if self.size is not None and self.size < 8:
            raise ValueError(f"fuse_ext_header size {self.size} is smaller than the header")
        return self.size

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.size is None:
            p = len(p).to_bytes(4, "little") + p[4:]
        return p + pay


class FuseSuppGroups(FuseElement):
    """7.38: the FUSE_EXT_GROUPS extension's payload (`nr_groups` then the gids)."""

    name = "fuse_supp_groups"
    fields_desc = [LEIntField("nr_groups", 0)]


# --- variable-length arguments that follow the structs --------------------------------

class FuseName(FuseLayer):
    """One NUL-terminated name (LOOKUP, MKDIR, UNLINK, xattr names …)."""

    __slots__ = ["missing_nul"]
    _name = "name"  # see FuseDirent: a `name` field needs `_name`
    fields_desc = [CStringField("name", b"")]


class FuseNames(FuseLayer):
    """Two NUL-terminated names: RENAME(2) old/new, SYMLINK name/target."""

    __slots__ = ["missing_nul"]
    _name = "names"  # see FuseDirent
    fields_desc = [CStringField("name", b""), CStringField("name2", b"")]


class FuseData(FuseLayer):
    """Opaque bytes: READ/WRITE data, xattr values, link targets, ioctl buffers."""

    name = "data"
    fields_desc = [StrField("data", b"")]

    def mysummary(self) -> str:
        return f"{len(self.data)} bytes"


class FuseDirentList(FuseLayer):
    name = "fuse_dirent[]"
    fields_desc = [PacketListField("dirents", [], FuseDirent, max_count=MAX_LIST_ITEMS)]


class FuseDirentplusList(FuseLayer):
    name = "fuse_direntplus[]"
    fields_desc = [PacketListField("direntplus", [], FuseDirentplus,
                                   max_count=MAX_LIST_ITEMS)]


class FuseForgetList(FuseLayer):
    name = "fuse_forget_one[]"
    fields_desc = [PacketListField("forgets", [], FuseForgetOne, max_count=MAX_LIST_ITEMS,
                                   count_from=lambda p: _count_of(p))]


class FuseRemovemappingList(FuseLayer):
    name = "fuse_removemapping_one[]"
    fields_desc = [PacketListField("mappings", [], FuseRemovemappingOne, max_count=MAX_LIST_ITEMS,
                                   count_from=lambda p: _count_of(p))]


class FuseIoctlIovecList(FuseLayer):
    name = "fuse_ioctl_iovec[]"
    fields_desc = [PacketListField("iovecs", [], FuseIoctlIovec, max_count=MAX_LIST_ITEMS)]


class FuseNodeidList(FuseLayer):
    """NOTIFY_PRUNE's node ids."""

    name = "nodeid[]"
    fields_desc = [FieldListField("nodeids", [], LELongField("", 0), max_count=MAX_LIST_ITEMS,
                                  count_from=lambda p: _count_of(p))]


class FuseExtensionList(FuseLayer):
    """Request extensions (security contexts, supplementary groups) after the args."""

    name = "fuse_ext_header[]"
    fields_desc = [PacketListField("extensions", [], FuseExtHeader, max_count=MAX_LIST_ITEMS)]


class CuseInitInfo(FuseLayer):
    """CUSE_INIT reply tail: NUL-separated `KEY=value` strings (DEVNAME=…)."""

    name = "cuse info"
    fields_desc = [StrField("info", b"")]


def _count_of(layer: Packet) -> int | None:
    """The `count` of the struct a list follows (BATCH_FORGET, REMOVEMAPPING)."""
    under = layer.underlayer
    return getattr(under, "count", None) if under is not None else None


def _fill_namelen(layer: Packet, p: bytes, at: int) -> bytes:
    if layer.namelen is None and isinstance(layer.payload, FuseName):
        return p[:at] + len(layer.payload.getfieldval("name")).to_bytes(4, "little") + p[at + 4:]
    return p

