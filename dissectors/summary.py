"""One-line text of a message, strace/tcpdump style, from a `quick.Brief`.

`fusetrace show`, the TUI list and Scapy's `summary()` all print these lines, so a
message reads the same everywhere. Which fields a line shows is a table per opcode.
"""

from __future__ import annotations

from typing import Any, Callable

from .constants import NotifyCode, Opcode
from .context import DEFAULT_CONTEXT, FuseContext
from .fields import errno_name
from .layouts import BODY_DEPENDENT, REPLIES, REQUESTS, plan_for
from .offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, reader
from .quick import NAMES, STRUCT, Brief, brief_reply, brief_request, steps
from .structs import FuseHeader, FuseInHeader, FuseOutHeader

O = Opcode
_ENTRY = ("nodeid", "generation", "attr.size", "attr.mode")
_OPEN = ("fh", "open_flags", "backing_id", "passthrough_fh")
_IO = ("fh", "offset", "size")

REQUEST_FIELDS: dict[int, tuple[str, ...]] = {
    O.LOOKUP: ("name",),
    O.FORGET: ("nlookup",),
    O.GETATTR: ("getattr_flags", "fh"),
    O.SETATTR: ("valid", "size", "mode", "uid", "gid", "fh"),
    O.SYMLINK: ("name", "name2"),
    O.MKNOD: ("name", "mode", "rdev"),
    O.MKDIR: ("name", "mode"),
    O.UNLINK: ("name",),
    O.RMDIR: ("name",),
    O.RENAME: ("name", "newdir", "name2"),
    O.RENAME2: ("name", "newdir", "name2", "flags"),
    O.LINK: ("oldnodeid", "name"),
    O.OPEN: ("flags",),
    O.OPENDIR: ("flags",),
    O.READ: _IO,
    O.READDIR: _IO,
    O.READDIRPLUS: _IO,
    O.WRITE: (*_IO, "write_flags"),
    O.RELEASE: ("fh", "flags", "release_flags"),
    O.RELEASEDIR: ("fh", "flags"),
    O.FSYNC: ("fh", "fsync_flags"),
    O.FSYNCDIR: ("fh", "fsync_flags"),
    O.SETXATTR: ("name", "size", "flags"),
    O.GETXATTR: ("name", "size"),
    O.LISTXATTR: ("size",),
    O.REMOVEXATTR: ("name",),
    O.FLUSH: ("fh",),
    O.INIT: ("major", "minor", "max_readahead", "flags", "flags2"),
    O.GETLK: ("fh", "lk.type", "lk.start", "lk.end"),
    O.SETLK: ("fh", "lk.type", "lk.start", "lk.end"),
    O.SETLKW: ("fh", "lk.type", "lk.start", "lk.end"),
    O.ACCESS: ("mask",),
    O.CREATE: ("name", "flags", "mode"),
    O.TMPFILE: ("name", "flags", "mode"),
    O.INTERRUPT: ("unique:interrupts",),
    O.BMAP: ("block", "blocksize"),
    O.IOCTL: ("fh", "cmd", "in_size", "out_size"),
    O.POLL: ("fh", "kh", "events"),
    O.NOTIFY_REPLY: ("offset", "size"),
    O.BATCH_FORGET: ("count",),
    O.FALLOCATE: ("fh", "offset", "length", "mode"),
    O.LSEEK: ("fh", "offset", "whence"),
    O.COPY_FILE_RANGE: ("fh_in", "off_in", "nodeid_out", "fh_out", "off_out", "len"),
    O.COPY_FILE_RANGE_64: ("fh_in", "off_in", "nodeid_out", "fh_out", "off_out", "len"),
    O.SETUPMAPPING: ("fh", "foffset", "len", "flags", "moffset"),
    O.REMOVEMAPPING: ("count",),
    O.STATX: ("fh", "sx_mask"),
    O.CUSE_INIT: ("major", "minor", "flags"),
}

REPLY_FIELDS: dict[int, tuple[str, ...]] = {
    **{op: _ENTRY for op in (O.LOOKUP, O.MKNOD, O.MKDIR, O.SYMLINK, O.LINK)},
    O.GETATTR: ("attr.ino", "attr.size", "attr.mode"),
    O.SETATTR: ("attr.ino", "attr.size", "attr.mode"),
    O.READLINK: ("data_len",),
    O.OPEN: _OPEN,
    O.OPENDIR: _OPEN,
    O.CREATE: ("nodeid", *_OPEN),
    O.TMPFILE: ("nodeid", *_OPEN),
    O.READ: ("data_len",),
    O.WRITE: ("size",),
    O.COPY_FILE_RANGE: ("size",),
    O.COPY_FILE_RANGE_64: ("bytes_copied",),
    O.STATFS: ("st.blocks", "st.bfree", "st.files", "st.bsize"),
    O.GETXATTR: ("size", "data_len"),
    O.LISTXATTR: ("size", "data_len"),
    O.INIT: ("major", "minor", "flags", "flags2", "max_write", "max_pages", "max_stack_depth"),
    O.GETLK: ("lk.type", "lk.start", "lk.end", "lk.pid"),
    O.BMAP: ("block",),
    O.IOCTL: ("result", "flags", "data_len"),
    O.POLL: ("revents",),
    O.READDIR: ("entries",),
    O.READDIRPLUS: ("entries",),
    O.LSEEK: ("offset",),
    O.STATX: ("stat.ino", "stat.size", "stat.mode"),
    O.CUSE_INIT: ("major", "minor", "flags", "dev_major", "dev_minor"),
}

NOTIFY_FIELDS: dict[int, tuple[str, ...]] = {
    NotifyCode.POLL: ("kh",),
    NotifyCode.INVAL_INODE: ("ino", "off", "len"),
    NotifyCode.INVAL_ENTRY: ("parent", "name", "flags"),
    NotifyCode.STORE: ("nodeid", "offset", "size"),
    NotifyCode.RETRIEVE: ("notify_unique", "nodeid", "offset", "size"),
    NotifyCode.DELETE: ("parent", "child", "name"),
    NotifyCode.PRUNE: ("count",),
}


_OPCODE_NAMES = {op.value: op.name for op in Opcode}


def opcode_name(opcode: int | None) -> str:
    if opcode is None:
        return "?"
    name = _OPCODE_NAMES.get(opcode)
    return name if name is not None else f"OP{opcode}"


def notify_name(code: int) -> str:
    try:
        return f"NOTIFY_{NotifyCode(code).name}"
    except ValueError:
        return f"NOTIFY_{code}"


_Getter = tuple[str, int, int, Any]  # label, layer (-1: extras), field index or key, formatter
_getters: dict[tuple[Any, ...], list[_Getter]] = {}


def _compile(names: tuple[str, ...], comps: tuple[Any, ...]) -> list[_Getter]:
    """Where each shown field lives in a message of this layout, found once per layout."""
    out: list[_Getter] = []
    for spec in names:
        name, _, label = spec.partition(":")
        for n, comp in enumerate(comps):
            i = comp.index.get(name)
            if i is not None:
                out.append((label or name, n, i, comp.formatters[i]))
                break
        else:
            out.append((label or name, -1, name, None))  # type: ignore[arg-type]
    return out


def _fields(brief: Brief, names: tuple[str, ...]) -> str:
    comps = tuple(comp for comp, _ in brief.layers)
    key = (names, comps)
    getters = _getters.get(key)
    if getters is None:
        getters = _getters[key] = _compile(names, comps)
    parts = []
    for label, layer, index, fmt in getters:
        if layer >= 0:
            value = brief.layers[layer][1][index]
            parts.append(f"{label}={fmt(value) if fmt else value}")
        else:
            text = brief.text(index)  # type: ignore[arg-type]
            if text is not None:
                parts.append(f"{label}={text}")
    return " ".join(parts)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def line(brief: Brief) -> str:
    """The message as one line, without time or direction (the caller adds those)."""
    if brief.direction == "request":
        head = f"{opcode_name(brief.opcode)} unique={brief.unique} nodeid={brief.nodeid}"
        body = _fields(brief, REQUEST_FIELDS.get(brief.opcode, ()))
    elif brief.direction == "notify":
        head = notify_name(brief.error)
        body = _fields(brief, NOTIFY_FIELDS.get(brief.error, ()))
    else:
        head = f"{opcode_name(brief.opcode)} unique={brief.unique}"
        if brief.error:
            body = f"error={brief.error} ({errno_name(brief.error)})"
        else:
            body = _fields(brief, REPLY_FIELDS.get(brief.opcode, ()))  # type: ignore[arg-type]
    note = f"[raw: {brief.reason}]" if brief.reason else ""
    return _join(head, body, note)


def request_line(hdr: FuseHeader) -> str:
    return line(brief_request(bytes(hdr), hdr.ctx or DEFAULT_CONTEXT))


def reply_line(hdr: FuseHeader) -> str:
    return line(brief_reply(bytes(hdr), hdr.ctx or DEFAULT_CONTEXT))


# --- the list hot path: a line straight from bytes --------------------------------------

_HEAD_IN = reader(FuseInHeader, "len", "unique", "nodeid", "total_extlen")
_HEAD_OUT = reader(FuseOutHeader, "len", "error", "unique")
LineFn = Callable[[bytes], "str | None"]


def compile_line(direction: str, opcode: int, ctx: FuseContext) -> LineFn | None:
    """A function giving `line(brief)` for one layout straight from the bytes.

    Only for layouts of fixed structs and names; it returns None for any message that is
    not exactly that shape (cut, extended, oversized, malformed), and the caller falls back
    to the full `Brief` path, which explains the difference. Cached per context.
    """
    key = ("line", direction, opcode)
    if key in ctx.plans:
        return ctx.plans[key]
    fn = _build_line(direction, opcode, ctx)
    ctx.plans[key] = fn
    return fn


def _build_line(direction: str, opcode: int, ctx: FuseContext) -> LineFn | None:
    table, names = (REQUESTS, REQUEST_FIELDS) if direction == "request" else (REPLIES, REPLY_FIELDS)
    if opcode not in table or opcode in BODY_DEPENDENT:
        return None
    plan, reason = plan_for(table, direction, ctx if direction == "request" else ctx.for_reply(opcode),
                            opcode, b"")
    if reason:
        return None
    walk = steps(tuple(plan))
    if any(step[0] not in (STRUCT, NAMES) for step in walk):
        return None
    comps = tuple(step[1] for step in walk if step[0] == STRUCT)
    getters = _compile(names.get(opcode, ()), comps)
    opname = opcode_name(opcode)
    hdr_size = IN_HEADER_SIZE if direction == "request" else OUT_HEADER_SIZE

    def fields(raw: bytes) -> str | None:
        off, layers, extras = hdr_size, [], {}
        for step in walk:
            if step[0] == STRUCT:
                st = step[1].st
                if off + st.size > len(raw):
                    return None
                layers.append(st.unpack_from(raw, off))
                off += st.size
            else:
                for key in step[1]:
                    nul = raw.find(b"\0", off)
                    if nul < 0:
                        return None
                    extras[key] = raw[off:nul]
                    off = nul + 1
        if off != len(raw):
            return None
        parts = []
        for label, layer, index, fmt in getters:
            if layer >= 0:
                value = layers[layer][index]
                parts.append(f"{label}={fmt(value) if fmt else value}")
            elif index in extras:
                parts.append(f"{label}={extras[index].decode('utf-8', 'backslashreplace')!r}")
        return " ".join(parts)

    if direction == "request":
        def request(raw: bytes) -> str | None:
            if len(raw) < IN_HEADER_SIZE:
                return None
            length, unique, nodeid, extlen = _HEAD_IN.unpack_from(raw)
            body = fields(raw) if length == len(raw) and not extlen else None  # extensions: slow path
            if body is None:
                return None
            return f"{opname} unique={unique} nodeid={nodeid} {body}" if body else \
                f"{opname} unique={unique} nodeid={nodeid}"
        return request

    def reply(raw: bytes) -> str | None:
        if len(raw) < OUT_HEADER_SIZE:
            return None
        length, error, unique = _HEAD_OUT.unpack_from(raw)
        if length != len(raw) or not unique:
            return None
        if error:
            return (f"{opname} unique={unique} error={error} ({errno_name(error)})"
                    if length == OUT_HEADER_SIZE else None)
        body = fields(raw)
        if body is None:
            return None
        return f"{opname} unique={unique} {body}" if body else f"{opname} unique={unique}"
    return reply


FuseInHeader.liner = staticmethod(request_line)
FuseOutHeader.liner = staticmethod(reply_line)
