"""`fusetrace export --pcapng`: every record a packet, for Wireshark and tshark.

One interface of link type LINKTYPE_USER0 (147) with nanosecond timestamps (if_tsresol
9) on the trace's own clock (CLOCK_MONOTONIC, as every fusetrace view). Each packet is a
small encapsulation header of ours, then the record's bytes:

    struct fusetrace_encap {   /* 24 bytes, little-endian */
        u8  version;           /* 1 */
        u8  kind;              /* 1 request, 2 reply or notification, 3 ioctl, 4 event */
        u8  dialect;           /* passthrough ABI negotiated so far: 0 none, 1 mainline, 2 android */
        u8  notes;             /* recorder notes: 1 cut by snaplen, 2 rejected by the kernel,
                                  4 altered by fusetrace, 8 spliced from several messages */
        u32 minor;             /* negotiated protocol minor (45 before INIT) */
        u64 flags;             /* negotiated INIT flags (flags | flags2 << 32) */
        u64 record;            /* the record's number in the trace */
    };

followed by the FUSE message as forwarded (requests, replies, notifications); for an
ioctl `u32 cmd, s32 result, u32 errno, u32 pid, u32 tid, u32 arg_len`, the argument and
the path of the fd it passed (UTF-8); for an event its text. The connection state rides
along because the layout of a body depends on it; pairing replies with requests is the
dissector's job (`fusetrace wireshark-plugin`). The recorder's notes are also the
packet's comment, and a message cut by the snap length keeps its true length as the
packet's original length.

The block format is written here (SHB, IDB, EPB): Scapy's PcapNgWriter keeps
microseconds in a float and cannot take an if_tsresol, and the records are already bytes.
"""

from __future__ import annotations

import struct
from typing import IO, Iterable, Iterator

from dissectors import SessionDecoder
from dissectors.context import Dialect
from inspector.timeline import Entry, annotate, entries, event_text
from traces import Kind, TraceReader

from .output import ExportError, atomic_output

LINKTYPE_USER0 = 147
ENCAP_VERSION = 1
_ENCAP = struct.Struct("<BBBBIQQ")
ENCAP_SIZE = _ENCAP.size
_IOCTL = struct.Struct("<IiIIII")
KIND_CODES = {kind.name.lower(): int(kind) for kind in Kind}
DIALECT_CODES = {Dialect.NONE: 0, Dialect.MAINLINE: 1, Dialect.ANDROID: 2}
NOTE_BITS = {"snap": 1, "rejected": 2, "altered": 4, "spliced": 8}

_SHB, _IDB, _EPB = 0x0A0D0D0A, 1, 6
_OPT_END, _OPT_COMMENT, _IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 0, 1, 2, 3, 9
_SHB_USERAPPL = 4
_U64 = (1 << 64) - 1


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in opts)
    return body + struct.pack("<HH", _OPT_END, 0)


def _block(kind: int, body: bytes) -> bytes:
    size = 12 + len(body)
    return struct.pack("<II", kind, size) + body + struct.pack("<I", size)


def header_blocks(source: str) -> bytes:
    """The section header and the one interface every packet is on."""
    shb = _block(_SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options(
        [(_SHB_USERAPPL, b"fusetrace"), (_OPT_COMMENT, f"fusetrace export of {source}".encode())]))
    idb = _block(_IDB, struct.pack("<HHI", LINKTYPE_USER0, 0, 0) + _options(
        [(_IF_NAME, b"fuse"),
         (_IF_DESCRIPTION, b"FUSE messages in a fusetrace encapsulation; timestamps: the "
                           b"trace's CLOCK_MONOTONIC"),
         (_IF_TSRESOL, bytes([9]))]))
    return shb + idb


def packet_block(ts_ns: int, data: bytes, original_len: int, comment: str) -> bytes:
    """An enhanced packet block on interface 0; `ts_ns` in the interface's ns units."""
    body = struct.pack("<IIIII", 0, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, len(data),
                       min(max(original_len, len(data)), 0xFFFFFFFF))
    opts = [(_OPT_COMMENT, comment.encode())] if comment else []
    return _block(_EPB, body + _pad(data) + _options(opts))


def _notes(meta: dict[str, object]) -> int:
    bits = 0
    if "len" in meta:
        bits |= NOTE_BITS["snap"]
    if meta.get("write_errno"):
        bits |= NOTE_BITS["rejected"]
    if "original" in meta:
        bits |= NOTE_BITS["altered"]
    if meta.get("fragments"):
        bits |= NOTE_BITS["spliced"]
    return bits


def _payload(entry: Entry) -> tuple[bytes, int]:
    """The bytes after the encapsulation header, and the length they had when sent."""
    rec, meta = entry.record, entry.record.meta or {}
    if entry.message is not None:
        return rec.raw or b"", rec.true_len
    if entry.ioctl is not None:
        call, path = entry.ioctl, meta.get("path")
        try:
            head = _IOCTL.pack(call.cmd, call.result, call.errno, meta.get("pid") or 0,
                               meta.get("tid") or 0, len(call.arg))
        except struct.error as exc:
            raise ExportError(f"record {rec.index}: the ioctl does not fit the "
                              f"encapsulation ({exc}); nothing exported") from None
        tail = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else b""
        data = head + call.arg + tail
        return data, len(data)
    data = event_text(rec).encode("utf-8", "surrogateescape")
    return data, len(data)


def packet_blocks(reader: TraceReader) -> Iterator[bytes]:
    """Every record of the trace as an enhanced packet block, in order."""
    dec = SessionDecoder()
    for entry in entries(reader, dec):
        rec = entry.record
        # A message decodes in its own context; ioctls and events in the connection's.
        ctx = entry.message.ctx if entry.message is not None else dec.ctx
        payload, true_len = _payload(entry)
        head = _ENCAP.pack(ENCAP_VERSION, int(rec.kind), DIALECT_CODES[ctx.dialect],
                           _notes(rec.meta or {}), min(ctx.minor, 0xFFFFFFFF), ctx.flags & _U64,
                           rec.index)
        comment = annotate("", rec).strip() if rec.raw is not None else ""
        yield packet_block(rec.ts, head + payload, len(head) + true_len, comment)


def write_pcapng(path: str, out_path: str) -> str | None:
    """Convert `path` and write it to `out_path` ("-": standard output), whole or not at
    all: a file is streamed into a temporary file, standard output gets the blocks only
    once every record was converted. A damaged trace is converted up to the damage;
    returns the reader's note on it (None for a whole trace)."""
    with TraceReader(path) as reader:
        blocks = packet_blocks(reader)
        with atomic_output(out_path, binary=True) as out:
            if out_path == "-":
                done = list(blocks)
                _write(out, [header_blocks(path), *done])  # type: ignore[arg-type]
            else:
                _write(out, [header_blocks(path)])  # type: ignore[arg-type]
                _write(out, blocks)  # type: ignore[arg-type]
        return reader.tail


def _write(out: IO[bytes], blocks: Iterable[bytes]) -> None:
    batch: list[bytes] = []
    for block in blocks:
        batch.append(block)
        if len(batch) >= 1024:
            out.write(b"".join(batch))
            batch.clear()
    out.write(b"".join(batch))
