"""A trace as decoded entries in recorded order: the one view `show`, `export` and the TUI share.

Records come from `traces`, meaning from `dissectors`; this module only pairs them up
(request ↔ reply by `unique`, for latency) and names ioctls in the negotiated dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from dissectors import IoctlCall, Message, SessionDecoder
from dissectors.constants import NO_REPLY_OPCODES
from dissectors.fields import errno_name
from traces import Kind, Record

ARROWS = {Kind.REQUEST: "->", Kind.REPLY: "<-", Kind.IOCTL: "io", Kind.EVENT: "--"}


@dataclass
class Entry:
    """One record with what it means."""

    record: Record
    message: Message | None = None  # requests and replies/notifications
    ioctl: IoctlCall | None = None
    latency_ns: int | None = None  # replies: time since their request
    request_index: int | None = None  # replies: record number of the request answered

    @property
    def arrow(self) -> str:
        return ARROWS[self.record.kind]

    @property
    def text(self) -> str:
        if self.message is not None:
            return annotate(self.message.text, self.record)
        if self.ioctl is not None:
            return ioctl_text(self.ioctl, self.record)
        return event_text(self.record)


def annotate(text: str, rec: Record) -> str:
    """A message's line plus what the recorder noted about it (cut, rejected, altered)."""
    meta = rec.meta
    if not meta:
        return text
    parts = [text]
    if "len" in meta:
        parts.append(f"[snap: {len(rec.raw or b'')} of {meta['len']} bytes kept]")
    if meta.get("write_errno"):
        parts.append(f"[kernel rejected the write: {errno_name(meta['write_errno'])}]")
    if "original" in meta:
        parts.append(f"[altered by fusetrace: {meta.get('reason', 'no reason given')}]")
    if meta.get("fragments"):
        parts.append(f"[spliced: reassembled from {len(meta['fragments'])} socket messages]")
    return " ".join(parts)


def ioctl_text(call: IoctlCall, rec: Record) -> str:
    meta = rec.meta or {}
    where = f" path={meta['path']}" if meta.get("path") else ""
    return f"{call.text} tid={meta.get('tid', '?')}{where}"


def event_text(rec: Record) -> str:
    meta = rec.meta or {}
    details = " ".join(f"{k}={v}" for k, v in meta.items() if k != "event")
    return f"{meta.get('event', 'event')} {details}".rstrip()


def feed_ioctl(dec: SessionDecoder, rec: Record) -> IoctlCall:
    m = rec.meta
    return dec.feed_ioctl(m.get("cmd", 0), m.get("arg") or b"", m.get("result", -1), m.get("errno", 0))


def entries(records: Iterable[Record], decoder: SessionDecoder | None = None) -> Iterator[Entry]:
    """Decode records in order, pairing replies with their requests."""
    dec = decoder or SessionDecoder()
    asked: dict[int, tuple[int, int]] = {}  # unique -> (record index, ts)
    for rec in records:
        if rec.kind is Kind.REQUEST:
            msg = dec.feed_request(rec.raw or b"")
            if msg.brief.unique and msg.brief.opcode not in NO_REPLY_OPCODES:
                asked[msg.brief.unique] = (rec.index, rec.ts)
            yield Entry(rec, message=msg)
        elif rec.kind is Kind.REPLY:
            msg = dec.feed_reply(rec.raw or b"")
            req = asked.pop(msg.brief.unique, None) if msg.brief.unique else None
            yield Entry(rec, message=msg,
                        latency_ns=rec.ts - req[1] if req else None,
                        request_index=req[0] if req else None)
        elif rec.kind is Kind.IOCTL:
            yield Entry(rec, ioctl=feed_ioctl(dec, rec))
        else:
            yield Entry(rec)
