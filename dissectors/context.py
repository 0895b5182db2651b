"""What decoding a message needs to know beyond its bytes.

Replies carry no opcode, and several structs changed size across protocol minors, so a
message decodes against a `FuseContext`: the negotiated minor and INIT flags, the
passthrough dialect, and for a reply the request it answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from .constants import (
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_PASSTHROUGH,
    FUSE_PASSTHROUGH_ANDROID,
    FUSE_PASSTHROUGH_ANDROID_EXT,
)


class Dialect(enum.Enum):
    """Which passthrough ABI the connection negotiated."""

    NONE = "none"  # passthrough not negotiated (or INIT not seen)
    MAINLINE = "mainline"  # FUSE_PASSTHROUGH, fuse_backing_map, backing_id (Linux 6.9+)
    ANDROID = "android"  # INIT bit 31, fuse_passthrough_out, passthrough_fh


def dialect_of(minor: int, flags: int) -> Dialect:
    """Detect the dialect from INIT reply flags (64-bit: flags | flags2 << 32)."""
    if flags & FUSE_PASSTHROUGH and minor >= 40:
        return Dialect.MAINLINE
    android_bit = FUSE_PASSTHROUGH_ANDROID_EXT if minor >= 36 else FUSE_PASSTHROUGH_ANDROID
    if flags & android_bit:
        return Dialect.ANDROID
    return Dialect.NONE


@dataclass(frozen=True)
class FuseContext:
    """Decoding context. `minor_known` is False until an INIT exchange was seen."""

    minor: int = FUSE_KERNEL_MINOR_VERSION
    flags: int = 0
    dialect: Dialect = Dialect.NONE
    minor_known: bool = False
    #: For replies: the opcode of the request answered, and that request's body fields.
    opcode: int | None = None
    request: Any = None
    #: Resolved layouts by (direction, opcode): a per-context cache for `layouts.py`.
    plans: dict[Any, Any] = field(default_factory=dict, init=False, compare=False,
                                  hash=False, repr=False)

    def for_reply(self, opcode: int | None, request: Any = None) -> "FuseContext":
        return replace(self, opcode=opcode, request=request)


DEFAULT_CONTEXT = FuseContext()
