"""The detail pane's content: one exchange (request and reply) as decoded Scapy trees whose
nodes know which bytes they came from, so the hex pane can highlight them.

Byte ranges come from re-walking each layer's fields with Scapy's own `getfield` over the
bytes the layer was dissected from: a layer starts where its `original` bytes start within
the message, and each field takes what `getfield` consumed. Caveat: fields Scapy cannot
re-walk (it raised) keep no range and are shown without highlighting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scapy.fields import PacketField, PacketListField
from scapy.packet import Packet

from dissectors.fields import NoteField
from dissectors.summary import opcode_name
from inspector.exchanges import Exchanges
from inspector.ranges import primed_decoder, records_in
from inspector.timeline import event_text, feed_ioctl
from traces import Kind, Record, TraceIndex


@dataclass
class Span:
    """A tree node: a label and the bytes [start, end) of its message it stands for."""

    label: str
    start: int | None = None
    end: int | None = None
    children: list[Span] = field(default_factory=list)


@dataclass
class Part:
    """One record of the exchange: its role, bytes and tree."""

    role: str  # "request", "reply", "notification", "ioctl", "event"
    record: Record
    data: bytes  # what the hex pane shows (message bytes, ioctl argument)
    tree: Span


def _fields(pkt: Packet, data: bytes, base: int) -> list[Span]:
    """Spans of `pkt`'s own fields, dissected from `data` that starts at `base`."""
    out: list[Span] = []
    rest, at = data, base
    lost = False  # a field could not be re-walked: the ones after it have no known bytes
    for fld in pkt.fields_desc:
        value = pkt.getfieldval(fld.name)
        try:
            left, _ = fld.getfield(pkt, rest) if not lost else (rest, None)
        except Exception:  # Scapy dissected it once but not again
            lost = True
        if lost:
            out.append(Span(f"{fld.name} = {_repr(fld, pkt, value)}"))
            continue
        size = len(rest) - len(left)
        if isinstance(fld, NoteField) and not value:  # no bytes and nothing to say
            rest = left
            continue
        span = Span(f"{fld.name} = {_repr(fld, pkt, value)}", at, at + size)
        if isinstance(fld, PacketField) and isinstance(value, Packet):
            span.label = fld.name
            span.children = _fields(value, rest[:size], at)
        elif isinstance(fld, PacketListField) and isinstance(value, list):
            span.label = f"{fld.name} ({len(value)})"
            span.children = _elements(value, rest[:size], at)
        out.append(span)
        rest, at = left, at + size
    return out


def _elements(items: list[Any], data: bytes, base: int) -> list[Span]:
    out: list[Span] = []
    at = 0
    for n, item in enumerate(items):
        if not isinstance(item, Packet):
            break
        children = _fields(item, data[at:], base + at)
        ends = [c.end for c in children if c.end is not None]
        end = max(ends) if ends else base + at
        out.append(Span(f"[{n}] {item.summary()}", base + at, end, children))
        at = end - base
    return out


def _repr(fld: Any, pkt: Packet, value: Any) -> str:
    try:
        text = fld.i2repr(pkt, value)
    except Exception:
        text = repr(value)
    text = str(text)
    return text if len(text) <= 200 else text[:197] + "..."


def packet_tree(title: str, pkt: Packet, data: bytes) -> Span:
    """`pkt` as layers of fields, each with its byte range within `data`."""
    root = Span(title, 0, len(data))
    total = len(pkt.original) if pkt.original is not None else len(data)
    layer: Packet | None = pkt
    while layer:
        original = layer.original if layer.original is not None else b""
        start = total - len(original)
        children = _fields(layer, original, start)
        ends = [c.end for c in children if c.end is not None]
        root.children.append(Span(layer.name, start, max(ends) if ends else start, children))
        layer = layer.payload or None
    return root


def _meta_tree(title: str, rec: Record) -> Span:
    return Span(title, children=[Span(f"{k} = {_short(v)}") for k, v in rec.meta.items()])


def _short(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def exchange(idx: TraceIndex, pairs: Exchanges, i: int) -> list[Part]:
    """Record i with the other half of its exchange, request first, decoded in context."""
    j = pairs.of(i)
    numbers = sorted((i, j)) if j >= 0 else [i]
    dec = primed_decoder(idx, numbers[0])
    parts: list[Part] = []
    for rec in records_in(idx, numbers, dec):
        n = rec.index
        if rec.kind is Kind.REQUEST:
            msg = dec.feed_request(rec.raw or b"")
            title = f"request #{n}: {opcode_name(msg.brief.opcode)} unique={msg.brief.unique}"
            parts.append(Part("request", rec, rec.raw or b"", packet_tree(title, msg.packet(), rec.raw or b"")))
        elif rec.kind is Kind.REPLY:
            msg = dec.feed_reply(rec.raw or b"")
            role = "reply" if msg.brief.direction == "reply" else "notification"
            title = f"{role} #{n}: {opcode_name(msg.brief.opcode) if role == 'reply' else ''}".rstrip()
            if rec.meta:
                title += f"  {_notes(rec)}"
            parts.append(Part(role, rec, rec.raw or b"", packet_tree(title, msg.packet(), rec.raw or b"")))
        elif rec.kind is Kind.IOCTL:
            call = feed_ioctl(dec, rec)
            tree = packet_tree(f"ioctl #{n}: {call.text}", call.packet(), call.arg)
            tree.children.append(_meta_tree("recorder's notes", rec))
            parts.append(Part("ioctl", rec, call.arg, tree))
        else:
            parts.append(Part("event", rec, b"", _meta_tree(f"event #{n}: {event_text(rec)}", rec)))
    return parts


def _notes(rec: Record) -> str:
    keys = [k for k in ("len", "write_errno", "reason", "fragments") if k in rec.meta]
    return "[" + " ".join(f"{k}={_short(rec.meta[k])}" for k in keys) + "]" if keys else ""


def hexdump_lines(data: bytes, start: int | None = None, end: int | None = None,
                  origin: int = 0) -> list[tuple[str, list[tuple[int, int]]]]:
    """Hex dump lines (offset, 16 bytes in hex, ASCII) of `data`, which sits at `origin` in
    its message, and per line the character ranges inside [start, end) to highlight."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        line = f"{origin + off:06x}  {hexes:<47}  {text}"
        marks: list[tuple[int, int]] = []
        if start is not None and end is not None and start < end:
            lo, hi = max(start, origin + off), min(end, origin + off + len(chunk))
            if lo < hi:
                a, b = lo - origin - off, hi - origin - off
                marks.append((8 + 3 * a, 8 + 3 * b - 1))
                marks.append((57 + a, 57 + b))
        lines.append((line, marks))
    return lines
