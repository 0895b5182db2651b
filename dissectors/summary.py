"""One-line text of a message, strace/tcpdump style, from a `quick.Brief`.

`fusetrace show`, the TUI list and Scapy's `summary()` all print these lines, so a
message reads the same everywhere. Which fields a line shows is a table per opcode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import NotifyCode, Opcode
from .context import DEFAULT_CONTEXT
from .fields import errno_name

if TYPE_CHECKING:
    from .quick import Brief
    from .structs import FuseHeader

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


def opcode_name(opcode: int | None) -> str:
    if opcode is None:
        return "?"
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"OP{opcode}"


def notify_name(code: int) -> str:
    try:
        return f"NOTIFY_{NotifyCode(code).name}"
    except ValueError:
        return f"NOTIFY_{code}"


def _fields(brief: "Brief", names: tuple[str, ...]) -> str:
    parts = []
    for spec in names:
        name, _, label = spec.partition(":")
        text = brief.text(name)
        if text is not None:
            parts.append(f"{label or name}={text}")
    return " ".join(parts)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def line(brief: "Brief") -> str:
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


def request_line(hdr: "FuseHeader") -> str:
    from .quick import brief_request

    return line(brief_request(bytes(hdr), hdr.ctx or DEFAULT_CONTEXT))


def reply_line(hdr: "FuseHeader") -> str:
    from .quick import brief_reply

    return line(brief_reply(bytes(hdr), hdr.ctx or DEFAULT_CONTEXT))

