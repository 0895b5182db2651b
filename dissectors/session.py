"""Stateful decoding of one FUSE connection, message by message in trace order.

A reply's layout depends on the request it answers (paired by `unique`) and on what INIT
negotiated (minor, flags, and so the passthrough dialect). `SessionDecoder` keeps that
state; each `feed_*` returns a `Message` holding the cheap `Brief` at once and building
the full Scapy packet only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scapy.packet import Packet

from .constants import FUSE_INIT_EXT, NO_REPLY_OPCODES, Opcode
from .context import DEFAULT_CONTEXT, Dialect, FuseContext, dialect_of
from .ioctls import dissect_ioctl_arg, ioctl_arg_fields, ioctl_name
from .layouts import NEEDS_REQUEST
from .offsets import reader, unique_of
from .quick import Brief, brief_reply, brief_request
from .structs import FuseInHeader, FuseOutHeader, FuseRaw, struct_name
from .summary import compile_line, line


def decode_request(raw: bytes, ctx: FuseContext = DEFAULT_CONTEXT) -> Packet:
    """kernel → server bytes as a Scapy packet; never raises."""
    return _decode(FuseInHeader, raw, ctx)


def decode_reply(raw: bytes, ctx: FuseContext = DEFAULT_CONTEXT) -> Packet:
    """server → kernel bytes (reply or notification) as a Scapy packet; never raises."""
    return _decode(FuseOutHeader, raw, ctx)


def _decode(cls: type, raw: bytes, ctx: FuseContext) -> Packet:
    name = struct_name(cls)
    if len(raw) < len(cls()):
        return FuseRaw(load=raw, reason=f"short {name}: {len(raw)} bytes")
    try:
        return cls(raw, ctx=ctx)
    except Exception as exc:  # scapy raises on some malformed input; never let it escape
        return FuseRaw(load=raw, reason=f"{name}: {exc}")


@dataclass
class Message:
    """One decoded message: `brief` now, `packet()` on demand with the same context."""

    raw: bytes
    brief: Brief
    ctx: FuseContext

    @property
    def text(self) -> str:
        return line(self.brief)

    def packet(self) -> Packet:
        if self.brief.direction == "request":
            return decode_request(self.raw, self.ctx)
        return decode_reply(self.raw, self.ctx)


@dataclass
class IoctlCall:
    """A /dev/fuse ioctl named in the connection's dialect."""

    cmd: int
    arg: bytes
    result: int
    errno: int
    dialect: Dialect

    @property
    def name(self) -> str:
        return ioctl_name(self.cmd, self.dialect)

    @property
    def fields(self) -> dict[str, int]:
        return ioctl_arg_fields(self.cmd, self.arg, self.dialect)

    @property
    def text(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.fields.items())
        outcome = f"= {self.result}" if self.errno == 0 else f"= -1 ({_errno(self.errno)})"
        return f"{self.name} {args} {outcome}".replace("  ", " ")

    def packet(self) -> Packet:
        return dissect_ioctl_arg(self.cmd, self.arg, self.dialect)


def _errno(err: int) -> str:
    from .fields import errno_name

    return errno_name(err)


_OP_UNIQUE = reader(FuseInHeader, "opcode", "unique")



@dataclass
class _Pending:
    opcode: int
    request: dict[str, Any] | None


@dataclass
class SessionDecoder:
    """Pairs replies with requests and tracks INIT; feed messages in recorded order."""

    ctx: FuseContext = DEFAULT_CONTEXT
    pending: dict[int, _Pending] = field(default_factory=dict)
    kernel_minor: int | None = None
    kernel_flags: int | None = None
    _reply_ctx: dict[int | None, FuseContext] = field(default_factory=dict, repr=False)

    def feed_request(self, raw: bytes) -> Message:
        brief = brief_request(raw, self.ctx)
        if brief.opcode == Opcode.INIT and not brief.reason:
            self.kernel_minor = brief.get("minor")
            self.kernel_flags = _flags64(brief)
        if brief.opcode is not None and brief.opcode not in NO_REPLY_OPCODES and brief.unique:
            wanted = {"size": brief.get("size")} if brief.opcode in NEEDS_REQUEST else None
            self.pending[brief.unique] = _Pending(brief.opcode, wanted)
        return Message(raw, brief, self.ctx)

    def feed_reply(self, raw: bytes) -> Message:
        unique = unique_of(raw)
        pending = self.pending.pop(unique, None) if unique else None
        ctx = self._context_for(pending)
        brief = brief_reply(raw, ctx)
        if pending and pending.opcode == Opcode.INIT and not brief.error and not brief.reason:
            self._negotiated(brief)
        return Message(raw, brief, ctx)

    def expect(self, unique: int, opcode: int) -> None:
        """A request this decoder was not fed (it lies before the slice of a trace being
        read) waits for its reply: decode that reply as an answer to `opcode`. A request it
        was fed keeps its own entry."""
        self.pending.setdefault(unique, _Pending(opcode, None))

    def request_text(self, raw: bytes) -> str:
        """`feed_request(raw).text`, straight from the bytes when the layout allows."""
        if len(raw) >= _OP_UNIQUE.size:
            opcode, unique = _OP_UNIQUE.unpack_from(raw)
            fn = compile_line("request", opcode, self.ctx)
            text = fn(raw) if fn is not None else None
            if text is not None:
                if opcode not in NO_REPLY_OPCODES and unique:
                    self.pending[unique] = _Pending(opcode, None)
                return text
        return self.feed_request(raw).text

    def reply_text(self, raw: bytes) -> str:
        """`feed_reply(raw).text`, straight from the bytes when the layout allows."""
        unique = unique_of(raw)
        pending = self.pending.get(unique) if unique else None
        if pending is not None and pending.request is None and pending.opcode != Opcode.INIT:
            fn = compile_line("reply", pending.opcode, self.ctx)
            text = fn(raw) if fn is not None else None
            if text is not None:
                del self.pending[unique]
                return text
        return self.feed_reply(raw).text

    def _context_for(self, pending: _Pending | None) -> FuseContext:
        """The reply's context; shared per opcode while the connection state holds."""
        if pending is not None and pending.request is not None:
            return self.ctx.for_reply(pending.opcode, pending.request)
        opcode = pending.opcode if pending else None
        ctx = self._reply_ctx.get(opcode)
        if ctx is None:
            ctx = self._reply_ctx[opcode] = self.ctx.for_reply(opcode)
        return ctx

    def feed_ioctl(self, cmd: int, arg: bytes, result: int, errno: int = 0) -> IoctlCall:
        return IoctlCall(cmd, arg, result, errno, self.ctx.dialect)

    def _negotiated(self, reply: Brief) -> None:
        minor = reply.get("minor", 0)
        if self.kernel_minor is not None:
            minor = min(minor, self.kernel_minor)
        flags = _flags64(reply)
        if self.kernel_flags is not None:
            flags &= self.kernel_flags
        self.ctx = FuseContext(minor=minor, flags=flags, dialect=dialect_of(minor, flags),
                               minor_known=True)
        self._reply_ctx.clear()


def _flags64(brief: Brief) -> int:
    """INIT flags as one word: flags2 counts only when FUSE_INIT_EXT is set."""
    flags = brief.get("flags", 0) or 0
    if flags & FUSE_INIT_EXT:
        flags |= (brief.get("flags2", 0) or 0) << 32
    return flags
