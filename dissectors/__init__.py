"""Scapy dissectors for the Linux FUSE protocol (7.45) and its passthrough ioctls.

Pure: bytes in, packets out, packets to bytes. Nothing here does I/O.

    >>> from dissectors import SessionDecoder
    >>> dec = SessionDecoder()
    >>> msg = dec.feed_request(raw_request); msg.text; msg.packet().show()
"""

from __future__ import annotations

from .constants import FOPEN_PASSTHROUGH, FUSE_PASSTHROUGH, NotifyCode, Opcode
from .context import DEFAULT_CONTEXT, Dialect, FuseContext, dialect_of
from .ioctls import DevIoctl, FuseBackingMap, FusePassthroughOut, dissect_ioctl_arg, ioctl_name
from .quick import Brief, brief_reply, brief_request
from .session import IoctlCall, Message, SessionDecoder, decode_reply, decode_request
from .structs import *  # noqa: F401,F403 - every wire struct is public API
from .structs import FuseInHeader, FuseOutHeader, FuseRaw
from .summary import line

__all__ = [
    "Brief", "DEFAULT_CONTEXT", "DevIoctl", "Dialect", "FOPEN_PASSTHROUGH", "FUSE_PASSTHROUGH",
    "FuseBackingMap", "FuseContext", "FuseInHeader", "FuseOutHeader", "FusePassthroughOut",
    "FuseRaw", "IoctlCall", "Message", "NotifyCode", "Opcode", "SessionDecoder", "brief_reply",
    "brief_request", "decode_reply", "decode_request", "dialect_of", "dissect_ioctl_arg",
    "ioctl_name", "line",
]
