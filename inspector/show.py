"""`fusetrace show` and `fusetrace export`: a trace as text lines or JSON lines."""

from __future__ import annotations

import json
from typing import IO, Any, Iterable, Iterator

from scapy.utils import hexdump

from dissectors import SessionDecoder
from dissectors.constants import NO_REPLY_OPCODES
from dissectors.offsets import reader, unique_of
from dissectors.structs import FuseInHeader
from traces import Kind, Record, TraceReader

from .timeline import ARROWS, Entry, annotate, entries, event_text, feed_ioctl, ioctl_text


def _latency(ns: int | None) -> str:
    if ns is None:
        return ""
    if ns < 1_000_000:
        return f" (+{ns / 1000:.0f}us)"
    return f" (+{ns / 1_000_000:.2f}ms)"


_OP_UNIQUE = reader(FuseInHeader, "opcode", "unique")


def show_lines(records: Iterable[Record], verbose: bool = False, hexa: bool = False,
               limit: int | None = None, decoder: SessionDecoder | None = None,
               t0: int | None = None) -> Iterator[str]:
    """tcpdump-style lines: record number, seconds since the first record (or `t0`),
    arrow, message. `decoder` carries connection state when `records` start mid-trace."""
    dec = decoder or SessionDecoder()
    if verbose or hexa:
        yield from _detailed_lines(records, verbose, hexa, limit, dec, t0)
        return
    # The plain listing is the hot path (millions of lines): lines straight from bytes.
    asked: dict[int, int] = {}  # unique -> ts of the request
    start = t0
    for n, rec in enumerate(records):
        if limit is not None and n >= limit:
            return
        start = rec.ts if start is None else start
        kind, raw, latency = rec.kind, rec.raw or b"", ""
        if kind is Kind.REQUEST:
            text = dec.request_text(raw)
            if rec.meta:
                text = annotate(text, rec)
            if len(raw) >= _OP_UNIQUE.size:
                opcode, unique = _OP_UNIQUE.unpack_from(raw)
                if opcode not in NO_REPLY_OPCODES:  # FORGETs would pile up here forever
                    asked[unique] = rec.ts
        elif kind is Kind.REPLY:
            text = dec.reply_text(raw)
            if rec.meta:
                text = annotate(text, rec)
            asked_ts = asked.pop(unique_of(raw), None) if unique_of(raw) else None
            latency = _latency(rec.ts - asked_ts) if asked_ts is not None else ""
        elif kind is Kind.IOCTL:
            text = ioctl_text(feed_ioctl(dec, rec), rec)
        else:
            text = event_text(rec)
        yield f"{rec.index:>7} {(rec.ts - start) / 1e9:11.6f} {ARROWS[kind]} {text}{latency}"


def _detailed_lines(records: Iterable[Record], verbose: bool, hexa: bool, limit: int | None,
                    dec: SessionDecoder, t0: int | None) -> Iterator[str]:
    start = t0
    for n, entry in enumerate(entries(records, dec)):
        if limit is not None and n >= limit:
            return
        rec = entry.record
        start = rec.ts if start is None else start
        yield f"{rec.index:>7} {(rec.ts - start) / 1e9:11.6f} {entry.arrow} {entry.text}{_latency(entry.latency_ns)}"
        if verbose:
            yield from _indent(_detail(entry))
        if hexa and rec.raw:
            yield from _indent(hexdump(rec.raw, dump=True))


def _detail(entry: Entry) -> str:
    if entry.message is not None:
        return entry.message.packet().show(dump=True)
    if entry.ioctl is not None:
        return entry.ioctl.packet().show(dump=True)
    return ""


def _indent(text: str) -> Iterator[str]:
    for line in text.rstrip("\n").splitlines():
        yield "        " + line


def write_show(records: Iterable[Record], out: IO[str], verbose: bool, hexa: bool,
               limit: int | None, decoder: SessionDecoder | None = None,
               t0: int | None = None) -> None:
    batch: list[str] = []
    for line in show_lines(records, verbose, hexa, limit, decoder, t0):
        batch.append(line)
        if len(batch) >= 4096:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def export_object(entry: Entry) -> dict[str, Any]:
    """One record as a JSON-able dict: raw bytes in hex, decoded fields by name."""
    rec = entry.record
    obj: dict[str, Any] = {"n": rec.index, "ts_ns": rec.ts, "kind": rec.kind.name.lower(),
                           "summary": entry.text}
    if entry.message is not None:
        brief = entry.message.brief
        obj.update(direction=brief.direction, opcode=brief.opcode, unique=brief.unique,
                   nodeid=brief.nodeid, error=brief.error, latency_ns=entry.latency_ns,
                   request=entry.request_index)
        fields = {name: val for comp, vals in brief.layers for name, val in zip(comp.names, vals)}
        fields.update(brief.extras)
        obj["fields"] = _jsonable(fields)
        if brief.reason:
            obj["raw_reason"] = brief.reason
    elif entry.ioctl is not None:
        obj.update(ioctl=entry.ioctl.name, args=entry.ioctl.fields)
    if rec.raw is not None:
        obj["raw"] = rec.raw.hex()
    if rec.meta:
        obj["meta"] = _jsonable(rec.meta)
    return obj


def write_jsonl(reader: TraceReader, out: IO[str]) -> None:
    out.write(json.dumps({"header": _jsonable(reader.header)}) + "\n")
    for entry in entries(reader):
        out.write(json.dumps(export_object(entry)) + "\n")
    if reader.tail:
        out.write(json.dumps({"tail": reader.tail}) + "\n")

