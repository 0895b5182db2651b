"""Which reply fields a replay does not compare: sensible defaults plus the user's `--mask`.

A mask is `OPCODE.FIELD` (`GETATTR.attr.size`, `LOOKUP.size`, `*.blocks`): OPCODE is the
request's opcode name (`*` for any; notifications are `NOTIFY_INVAL_ENTRY` …), FIELD one or
more dotted parts of a field's path, matched as a whole run of parts anywhere in it, so
`size` masks `fuse_attr_out.attr.size` but not `attr.blksize`.

The defaults mask what legitimately differs between two runs of the same server on the same
data: times (the clock moved on), generation and inode numbers (the backing filesystem
hands out new ones, e.g. on a fresh copy of a directory), and STATFS's free blocks and
inodes (the disk under a passthrough or overlay server is shared with everything else),
and the order of a directory's entries (POSIX fixes none: entries are paired by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from dissectors.constants import NotifyCode, Opcode

#: (mask, why) of the default masks.
DEFAULTS: tuple[tuple[str, str], ...] = (
    ("*.atime", "times"), ("*.mtime", "times"), ("*.ctime", "times"), ("*.btime", "times"),
    ("*.atimensec", "times"), ("*.mtimensec", "times"), ("*.ctimensec", "times"),
    ("*.generation", "generation numbers"),
    ("*.ino", "inode numbers"),
    ("STATFS.blocks", "host state"), ("STATFS.files", "host state"),
    ("STATFS.bfree", "free space"), ("STATFS.bavail", "free space"), ("STATFS.ffree", "free space"),
    ("READDIR.order", "directory order"), ("READDIRPLUS.order", "directory order"),
)


def _opcode(name: str) -> int | None:
    """An opcode (or NOTIFY_ code, offset by 1000 so both fit one key space); None for `*`."""
    if name == "*":
        return None
    upper = name.upper()
    if upper.startswith("NOTIFY_") and upper[7:] in NotifyCode.__members__:
        return notify_key(NotifyCode[upper[7:]])
    if upper in Opcode.__members__:
        return int(Opcode[upper])
    raise ValueError(f"bad mask {name!r}: unknown opcode (e.g. GETATTR, READDIRPLUS, NOTIFY_STORE, *)")


def notify_key(code: int) -> int:
    """The opcode-like key notifications use in masks (they carry no opcode)."""
    return 1000 + code


@dataclass(frozen=True)
class Mask:
    opcode: int | None  # None: every opcode
    parts: tuple[str, ...]
    text: str

    @classmethod
    def parse(cls, spec: str) -> Mask:
        """`OPCODE.FIELD[.FIELD…]`; ValueError says what is wrong."""
        op, dot, field = spec.strip().partition(".")
        if not dot or not op or not field or "" in field.split("."):
            raise ValueError(f"bad mask {spec!r}: want OPCODE.FIELD, e.g. GETATTR.attr.size or *.blocks")
        return cls(_opcode(op), tuple(field.split(".")), spec.strip())

    def covers(self, opcode: int | None, path: tuple[str, ...]) -> bool:
        if self.opcode is not None and self.opcode != opcode:
            return False
        n = len(self.parts)
        return any(path[i:i + n] == self.parts for i in range(len(path) - n + 1))


class Masks:
    """The masks in effect: the defaults (unless dropped) and the user's, in that order."""

    def __init__(self, user: Iterable[str] = (), *, defaults: bool = True) -> None:
        self.defaults = [Mask.parse(spec) for spec, _ in DEFAULTS] if defaults else []
        self.user = [Mask.parse(spec) for spec in user]
        self._all = (*self.defaults, *self.user)
        self.which = lru_cache(maxsize=None)(self._which)

    def masked(self, opcode: int | None, path: str) -> bool:
        """Whether the field at `path` (dotted) of a reply to `opcode` is not compared."""
        return self.which(opcode, path) is not None

    def _which(self, opcode: int | None, path: str) -> str | None:
        """The first mask that covers the field, as `describe` lists it; None: compared."""
        parts = tuple(path.split("."))
        n = len(self.defaults)
        for i, mask in enumerate(self._all):
            if mask.covers(opcode, parts):
                return f"{mask.text} ({'default' if i < n else '--mask'})"
        return None

    def describe(self) -> list[str]:
        """One entry per mask, as the report lists them."""
        return ([f"{m.text} (default)" for m in self.defaults]
                + [f"{m.text} (--mask)" for m in self.user])
