"""Helpers for trace tests: hand-built FUSE headers and a small trace of every record kind."""

from __future__ import annotations

from pathlib import Path

import msgpack

from traces import TraceWriter

#: Header fields every test trace carries.
HEADER = {"kernel": "6.18.0-test", "argv": ["passthrough_hp", "/src", "/mnt"],
          "mountpoint": "/mnt", "options": ["allow_other"], "snaplen": 32, "source": "proxy"}


def in_header(opcode: int, unique: int, nodeid: int, body: bytes = b"") -> bytes:
    """A fuse_in_header (40 bytes, little-endian) plus body, built by hand for exact bytes."""
    size = 40 + len(body)
    return (size.to_bytes(4, "little") + opcode.to_bytes(4, "little") + unique.to_bytes(8, "little")
            + nodeid.to_bytes(8, "little") + bytes(16) + body)


def out_header(unique: int, error: int = 0, body: bytes = b"") -> bytes:
    size = 16 + len(body)
    return size.to_bytes(4, "little") + error.to_bytes(4, "little", signed=True) \
        + unique.to_bytes(8, "little") + body


def write_small(path: Path) -> list[tuple[int, int]]:
    """~30 records of every kind; returns each record's (start, end) byte span."""
    with TraceWriter(path, HEADER) as w:
        ends = [w.bytes_written]

        def mark(_: None) -> None:
            ends.append(w.bytes_written)

        mark(w.request(in_header(26, 2, 0, bytes(64)), ts=100,
                       original=in_header(26, 2, 0, b"\xff" * 64),
                       reason="masked FUSE_OVER_IO_URING"))
        mark(w.reply(out_header(2, 0, bytes(64)), ts=110))
        for i in range(4, 30, 2):
            op = (1, 3, 15)[i % 3]
            mark(w.request(in_header(op, i, 1 + i % 5, b"name\0"), ts=100 + i * 10))
            if op == 15:
                mark(w.reply(out_header(i, 0, b"x" * 32)[:48], ts=105 + i * 10, len=16 + 4096))
            else:
                mark(w.reply(out_header(i, -2 if i % 4 == 0 else 0), ts=105 + i * 10))
        mark(w.reply(out_header(0, 2, bytes(24)), ts=400))  # notification: INVAL_INODE
        mark(w.reply(out_header(99, -22), ts=405, write_errno=22))  # unknown unique, rejected
        mark(w.ioctl(cmd=0x4010E501, arg=bytes(16), result=3, tid=7, pid=7, fd=5, path="/src/f",
                     out=bytes(16), ts=410))
        mark(w.ioctl(cmd=0x4004E502, arg=b"\x03\0\0\0", result=-1, errno=22, ts=420))
        mark(w.event("server_exit", ts=500, status=1, signal=None))
        mark(w.event("session_end", ts=510))
    return list(zip(ends, ends[1:]))


def packed(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)
