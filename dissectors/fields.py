"""Scapy fields that print FUSE values the way strace does (modes, errnos, open flags).

All are little-endian wire fields except `NoteField`, which occupies no bytes and carries
what the decoder has to say about a message (why it was left raw).
"""

from __future__ import annotations

import errno
import os
import stat
from functools import lru_cache
from typing import Any

from scapy.fields import Field, FlagsField, LEIntField, LESignedIntField, StrField

#: the name tables below are public: the Wireshark plugin generator reads them too
OPEN_ACCMODE = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
OPEN_FLAGS = {
    value: name
    for name in (
        "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC",
        "O_ASYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME",
        "O_CLOEXEC", "O_PATH", "O_TMPFILE",
    )
    if (value := getattr(os, name, 0))
}
# O_TMPFILE includes O_DIRECTORY and O_SYNC includes O_DSYNC: print the larger name only.
OPEN_FLAGS.pop(getattr(os, "O_TMPFILE", 0), None)
OPEN_FLAGS[0o20000000] = "__O_TMPFILE"
OPEN_FLAGS[0o4000000] = "__O_SYNC"


def _kernel_o_largefile() -> int:
    """The kernel's O_LARGEFILE, which FUSE puts in every open's flags (force_o_largefile).

    glibc defines O_LARGEFILE as 0 on 64-bit hosts, so `os` cannot tell us; the arch's other
    flag values can (include/uapi/asm-generic/fcntl.h and the arch overrides).
    """
    if getattr(os, "O_LARGEFILE", 0):
        return os.O_LARGEFILE
    if getattr(os, "O_DIRECTORY", 0) == 0o200000:
        return 0o100000  # asm-generic: x86, riscv, s390, loongarch ...
    if getattr(os, "O_DIRECT", 0) == 0o200000:
        return 0o400000  # arm, arm64
    if getattr(os, "O_DIRECT", 0) == 0o400000:
        return 0o200000  # powerpc
    return 0


if _kernel_o_largefile():
    OPEN_FLAGS[_kernel_o_largefile()] = "O_LARGEFILE"

FILE_TYPES = {
    stat.S_IFREG: "S_IFREG", stat.S_IFDIR: "S_IFDIR", stat.S_IFLNK: "S_IFLNK",
    stat.S_IFCHR: "S_IFCHR", stat.S_IFBLK: "S_IFBLK", stat.S_IFIFO: "S_IFIFO",
    stat.S_IFSOCK: "S_IFSOCK",
}


def errno_name(err: int) -> str:
    """`-2` → `ENOENT`; unknown numbers stay numbers."""
    return errno.errorcode.get(abs(err), str(abs(err))) if err else "OK"


@lru_cache(maxsize=4096)
def mode_repr(mode: int) -> str:
    """`0o100644` → `S_IFREG|0644`, as strace prints modes."""
    kind = FILE_TYPES.get(stat.S_IFMT(mode))
    perms = f"{stat.S_IMODE(mode):04o}"
    return f"{kind}|{perms}" if kind else perms


@lru_cache(maxsize=4096)
def open_flags_repr(flags: int) -> str:
    """`0o100102` → `O_RDWR|O_CREAT|O_LARGEFILE`."""
    parts = [OPEN_ACCMODE.get(flags & os.O_ACCMODE, f"{flags & os.O_ACCMODE:#o}")]
    rest = flags & ~os.O_ACCMODE
    for value, name in sorted(OPEN_FLAGS.items()):
        if rest & value == value:
            parts.append(name)
            rest &= ~value
    if rest:
        parts.append(f"{rest:#o}")
    return "|".join(parts)


def flags_repr(value: int, table: dict[int, str]) -> str:
    """Names of the set bits of `value`, unknown bits in hex; `0` for none."""
    names = [name for bit, name in table.items() if value & bit]
    unknown = value & ~sum(table)
    if unknown:
        names.append(hex(unknown))
    return "|".join(names) or "0"


class LEFlags(FlagsField):
    """A little-endian flag word of `bits` bits named from a `{bit: name}` table."""

    def __init__(self, name: str, default: int, bits: int, table: dict[int, str]) -> None:
        from .constants import bit_names

        super().__init__(name, default, -bits, bit_names(table, bits))

    def i2repr(self, pkt: Any, x: Any) -> str:
        # strace style, like the one-line summaries: `A|B`, unknown bits in hex.
        if x is None:
            return "None"
        table = {1 << i: n for i, n in enumerate(self.names) if not n.startswith("bit")}
        return flags_repr(int(x), table)


class ModeField(LEIntField):
    def i2repr(self, pkt: Any, x: int | None) -> str:
        return "None" if x is None else mode_repr(x)


class ModeShortField(ModeField):
    """A 16-bit mode (`fuse_statx.mode`, as in statx(2))."""

    def __init__(self, name: str, default: int | None) -> None:
        Field.__init__(self, name, default, "<H")


class OpenFlagsField(LEIntField):
    def i2repr(self, pkt: Any, x: int | None) -> str:
        return "None" if x is None else open_flags_repr(x)


class ErrnoField(LESignedIntField):
    """`fuse_out_header.error`: a negated errno (or a notify code when unique is 0)."""

    def i2repr(self, pkt: Any, x: int | None) -> str:
        if x is None:
            return "None"
        if x < 0:
            return f"{x} ({errno_name(x)})"
        return str(x)


class NoteField(StrField):
    """Occupies no wire bytes; holds the decoder's reason for a raw fallback."""

    def addfield(self, pkt: Any, s: bytes, val: Any) -> bytes:
        return s

    def getfield(self, pkt: Any, s: bytes) -> tuple[bytes, Any]:
        return s, b""

    def i2repr(self, pkt: Any, x: Any) -> str:
        return repr(x.decode() if isinstance(x, bytes) else x)


class CStringField(StrField):
    """A NUL-terminated name; the NUL is added when building and dropped when parsing.

    A name without its NUL is kept (the bytes are there) and flagged by `missing_nul`
    on the layer (the set of such fields), so a decoder never invents the terminator,
    not even when the layer is built again.
    """

    def addfield(self, pkt: Any, s: bytes, val: Any) -> bytes:
        nul = b"" if self.name in (getattr(pkt, "missing_nul", None) or ()) else b"\0"
        return s + self.i2m(pkt, val) + nul

    def getfield(self, pkt: Any, s: bytes) -> tuple[bytes, bytes]:
        end = s.find(b"\0")
        if end < 0:
            missing = getattr(pkt, "missing_nul", None) or frozenset()
            object.__setattr__(pkt, "missing_nul", missing | {self.name})
            return b"", s
        return s[end + 1:], s[:end]

    def i2repr(self, pkt: Any, x: Any) -> str:
        return repr(x.decode("utf-8", "backslashreplace")) if isinstance(x, bytes) else repr(x)


class AlignPadField(StrField):
    """Alignment bytes after a variable field (FUSE_DIRENT_ALIGN): zeros when building,
    kept as sent when parsing, so junk in the padding is shown rather than lost."""

    __slots__ = ["align", "fixed", "after"]

    def __init__(self, name: str, align: int, fixed: int, after: str) -> None:
        super().__init__(name, None)
        self.align, self.fixed, self.after = align, fixed, after

    def _size(self, pkt: Any) -> int:
        used = self.fixed + len(pkt.getfieldval(self.after) or b"")
        return -used % self.align

    def addfield(self, pkt: Any, s: bytes, val: Any) -> bytes:
        size = self._size(pkt)
        return s + (val if isinstance(val, bytes) and len(val) == size else b"\0" * size)

    def getfield(self, pkt: Any, s: bytes) -> tuple[bytes, bytes]:
        size = self._size(pkt)
        return s[size:], s[:size]
