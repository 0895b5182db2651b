"""Answer one kernel request from the book: bytes in, reply bytes out, no I/O.

INIT gets the recorded INIT reply, limited to what the live kernel offers and without
passthrough (the served mount has no backing files) or io_uring (requests are read from
/dev/fuse). FORGET, BATCH_FORGET, NOTIFY_REPLY and INTERRUPT get nothing (every request
is answered at once, so there is nothing to interrupt). DESTROY gets an empty reply.
Everything else gets the recorded reply the book picks, with the live `unique`, or the
miss errno.

The INIT reply's `max_write` and `max_pages` come from an untrusted trace: they are
clamped to what this kernel allows (`fs.fuse.max_pages_limit` pages), so the read buffer
they size stays bounded whatever the trace says.
"""

from __future__ import annotations

import errno
import os
import re

from dissectors import SessionDecoder
from dissectors.constants import (
    FUSE_INIT_EXT,
    FUSE_KERNEL_VERSION,
    FUSE_OVER_IO_URING,
    FUSE_PASSTHROUGH,
    FUSE_PASSTHROUGH_ANDROID,
    FUSE_PASSTHROUGH_ANDROID_EXT,
    Opcode,
)
from dissectors.context import DEFAULT_CONTEXT
from dissectors.offsets import put
from dissectors.opcodes import FILE_IO
from dissectors.quick import Brief
from dissectors.session import decode_reply
from dissectors.structs import FuseOutHeader
from dissectors.summary import line, opcode_name

from ..features import max_pages_limit
from .book import NOT_MATCHED, ReplyBook
from .keys import Fields, key_of, request_fields
from .report import Miss, ServeReport

#: INIT flags never granted when serving a trace.
NOT_SERVED = (FUSE_PASSTHROUGH | FUSE_PASSTHROUGH_ANDROID | FUSE_PASSTHROUGH_ANDROID_EXT
              | FUSE_OVER_IO_URING)
_UNIQUE = re.compile(r" unique=\d+")
PASSTHROUGH_NOTE = ("the recorded server opened this file with passthrough: its reads and "
                    "writes went to the backing file, never through the trace, so the trace "
                    "cannot answer them")


def with_unique(reply: bytes, unique: int) -> bytes:
    out = bytearray(reply)
    put(FuseOutHeader, "unique", out, unique)
    return bytes(out)


def error_reply(unique: int, err: int) -> bytes:
    return bytes(FuseOutHeader(unique=unique, error=-err))


def request_text(brief: Brief) -> str:
    """A request's summary line without its `unique`, which differs every run."""
    return _UNIQUE.sub("", line(brief), count=1)


class Responder:
    """Answers requests of one live connection from `book`, noting what it did in `report`."""

    def __init__(self, book: ReplyBook, miss_errno: int = errno.EIO) -> None:
        self.book = book
        self.miss_errno = miss_errno
        self.decoder = SessionDecoder()
        self.report = ServeReport(book.path, miss_errno, recorded=len(book.exchanges))
        self.destroyed = False
        self.max_pages = max_pages_limit()
        #: the largest WRITE payload the INIT reply lets the kernel send
        self.max_write = self.max_pages * os.sysconf("SC_PAGE_SIZE")

    def respond(self, raw: bytes) -> bytes | None:
        brief = self.decoder.feed_request(raw).brief
        op = brief.opcode
        if op == Opcode.INIT:
            reply = self._init(brief)
        elif op == Opcode.DESTROY:
            self.destroyed = True
            reply = error_reply(brief.unique, 0)
        elif op is None or op in NOT_MATCHED:
            return None
        else:
            reply = self._answer(brief, raw, op)
        self.decoder.feed_reply(reply)  # keeps the decoder's pending map and context right
        return reply

    def finish(self, stop_reason: str) -> ServeReport:
        self.report.unused = self.book.unused
        self.report.stop_reason = stop_reason
        return self.report

    # --- requests ---------------------------------------------------------------------

    def _answer(self, brief: Brief, raw: bytes, op: int) -> bytes:
        self.report.requests += 1
        fields = request_fields(brief, raw, self.book.snaplen)
        key = key_of(op, fields)
        found = self.book.take(key)
        if found is None:
            self._miss(key, brief, fields)
            return error_reply(brief.unique, self.miss_errno)
        ex, repeated = found
        if ex.cut:
            self.report.cut[opcode_name(op)] += 1
            return error_reply(brief.unique, errno.EIO)
        self.report.answered += 1
        if repeated:
            self.report.repeated[opcode_name(op)] += 1
        return with_unique(ex.reply, brief.unique)

    def _miss(self, key: object, brief: Brief, fields: Fields) -> None:
        known = self.report.misses.get(key)
        if known is not None:
            known.count += 1
            return
        miss = Miss(request_text(brief))
        op = brief.opcode or 0
        if op in FILE_IO and fields.get("fh", fields.get("fh_in")) in self.book.passthrough_fhs:
            miss.note = PASSTHROUGH_NOTE
        closest = self.book.closest(op, fields)
        if closest is None:
            miss.note = miss.note or f"the trace holds no {opcode_name(op)} request"
        else:
            miss.closest = f"#{closest.exchange.index} {request_text(closest.exchange.brief)}"
            miss.differs = closest.differs
        self.report.misses[key] = miss

    # --- INIT -------------------------------------------------------------------------

    def _init(self, req: Brief) -> bytes:
        """The recorded INIT reply, limited to what this kernel offers, minus NOT_SERVED."""
        if req.get("major") != FUSE_KERNEL_VERSION:
            return error_reply(req.unique, errno.EPROTO)
        offered = req.get("flags") or 0
        if offered & FUSE_INIT_EXT:
            offered |= (req.get("flags2") or 0) << 32
        pkt = decode_reply(self.book.init_reply, DEFAULT_CONTEXT.for_reply(Opcode.INIT))
        init = pkt.payload
        has = init.fieldtype
        recorded = init.flags
        if "flags2" in has and recorded & FUSE_INIT_EXT:
            recorded |= init.flags2 << 32
        flags = recorded & offered & ~NOT_SERVED
        init.flags = flags & 0xFFFFFFFF
        if "flags2" in has:
            init.flags2 = flags >> 32
        if "max_stack_depth" in has:
            init.max_stack_depth = 0
        if "max_write" in has:
            init.max_write = min(init.max_write, self.max_write)
        if "max_pages" in has:
            init.max_pages = min(init.max_pages, self.max_pages)
        pkt.unique = req.unique
        return bytes(pkt)
