"""Realistic synthetic traces for tests, benches and demos.

`synthetic_trace()` writes an INIT exchange, then a random but consistent session:
LOOKUP/GETATTR/OPEN/READ/WRITE/RELEASE/FORGET with matching replies (some out of order),
ENOENT and EACCES errors, passthrough opens with their BACKING_OPEN/BACKING_CLOSE ioctls,
inode notifications, an INIT the proxy altered, and READ/WRITE data cut by a snap length.

Messages are built by the dissectors' Scapy classes, but only once per template: building
a packet costs ~100 µs, so each record copies a template and patches unique, nodeid, fh,
sizes and lengths with `struct.pack_into`, which makes a million records take seconds.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from dissectors.constants import (FOPEN_PASSTHROUGH, FUSE_INIT_EXT, FUSE_OVER_IO_URING,
                                  FUSE_PASSTHROUGH)
from dissectors.constants import FUSE_ROOT_ID, NotifyCode, Opcode
from dissectors.ioctls import DevIoctl, FuseBackingMap, FuseIoctlU32
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, field_offsets
from dissectors.structs import (
    FuseAttr, FuseAttrOut, FuseData, FuseEntryOut, FuseForgetIn, FuseGetattrIn, FuseInHeader,
    FuseInitIn, FuseInitOut, FuseName, FuseNotifyInvalInodeOut, FuseOpenIn, FuseOpenOut,
    FuseOutHeader, FuseReadIn, FuseReleaseIn, FuseWriteIn, FuseWriteOut)

from .records import Kind
from .writer import TraceWriter

SNAPLEN = 64
NAMES = 200
_DATA = b"synthetic file data, " * 4
_WRITE_DATA_AT = IN_HEADER_SIZE + len(bytes(FuseWriteIn()))

Item = tuple[Kind, bytes | None, dict[str, Any]]


@dataclass(frozen=True)
class _Templates:
    lookup: list[bytes]  # one LOOKUP request per name
    entry: bytes
    error: bytes
    getattr: bytes
    attr: bytes
    open: bytes
    opened: bytes
    read: bytes
    data_reply: bytes  # out header + SNAPLEN data bytes
    write: bytes  # in header + fuse_write_in + SNAPLEN data bytes
    written: bytes
    release: bytes
    forget: bytes
    inval_inode: bytes
    init: bytes
    init_offered: bytes
    init_reply: bytes
    backing_map: bytes
    backing_id: bytes


@lru_cache(maxsize=1)
def _templates() -> _Templates:
    def req(op: int, body: Any) -> bytes:
        return bytes(FuseInHeader(opcode=op, uid=1000, gid=1000, pid=4242) / body)

    attr = FuseAttr(mode=0o100644, nlink=1, uid=1000, gid=1000, blksize=4096,
                    atime=1_750_000_000, mtime=1_750_000_000, ctime=1_750_000_000)
    offered = 0x5FD73FFFFFB | FUSE_OVER_IO_URING  # this kernel's offer, io_uring enabled
    init_in = FuseInitIn(max_readahead=131072, flags=offered & 0xFFFFFFFF, flags2=offered >> 32)
    forwarded = offered & ~FUSE_OVER_IO_URING
    init_fwd = FuseInitIn(max_readahead=131072, flags=forwarded & 0xFFFFFFFF,
                          flags2=forwarded >> 32)
    agreed = 0x1 | 0x8 | FUSE_INIT_EXT | FUSE_PASSTHROUGH  # 0x1 ASYNC_READ, 0x8 ATOMIC_O_TRUNC
    return _Templates(
        lookup=[req(Opcode.LOOKUP, FuseName(name=f"file{i}".encode())) for i in range(NAMES)],
        entry=bytes(FuseOutHeader() / FuseEntryOut(entry_valid=1, attr_valid=1, attr=attr)),
        error=bytes(FuseOutHeader()),
        getattr=req(Opcode.GETATTR, FuseGetattrIn()),
        attr=bytes(FuseOutHeader() / FuseAttrOut(attr_valid=1, attr=attr)),
        open=req(Opcode.OPEN, FuseOpenIn(flags=os.O_RDWR)),
        opened=bytes(FuseOutHeader() / FuseOpenOut()),
        read=req(Opcode.READ, FuseReadIn(flags=os.O_RDWR)),
        data_reply=bytes(FuseOutHeader() / FuseData(data=_DATA[:SNAPLEN])),
        write=req(Opcode.WRITE, FuseWriteIn(flags=os.O_RDWR) / FuseData(data=_DATA[:SNAPLEN])),
        written=bytes(FuseOutHeader() / FuseWriteOut()),
        release=req(Opcode.RELEASE, FuseReleaseIn(flags=os.O_RDWR)),
        forget=req(Opcode.FORGET, FuseForgetIn()),
        inval_inode=bytes(FuseOutHeader(error=NotifyCode.INVAL_INODE)
                          / FuseNotifyInvalInodeOut(off=0, len=-1)),
        init=req(Opcode.INIT, init_fwd),
        init_offered=req(Opcode.INIT, init_in),
        init_reply=bytes(FuseOutHeader() / FuseInitOut(
            flags=agreed & 0xFFFFFFFF, flags2=agreed >> 32,
            max_write=1 << 20, max_pages=256, time_gran=1, max_stack_depth=1,
            max_background=12, congestion_threshold=9)),
        backing_map=bytes(FuseBackingMap(fd=0)),
        backing_id=bytes(FuseIoctlU32(value=0)),
    )


Field = tuple[int, str, int]  # (offset in the message, struct format, value)


def _at(cls: type, name: str, value: int, base: int = 0) -> Field:
    """Field `name` of a `cls` struct that starts at `base` of a message, set to `value`."""
    at, code = field_offsets(cls)[name]
    return base + at, code, value


def _in(name: str, value: int) -> Field:
    return _at(FuseInHeader, name, value)


def _out(name: str, value: int) -> Field:
    return _at(FuseOutHeader, name, value)


def _req(cls: type, name: str, value: int) -> Field:
    """A field of a request's first body struct."""
    return _at(cls, name, value, IN_HEADER_SIZE)


def _rep(cls: type, name: str, value: int) -> Field:
    """A field of a reply's first body struct."""
    return _at(cls, name, value, OUT_HEADER_SIZE)


def _patch(template: bytes, *fields: Field, cut: int | None = None) -> bytes:
    """A copy of `template` (first `cut` bytes) with the fields set."""
    buf = bytearray(template[:cut])
    for offset, code, value in fields:
        struct.pack_into(code, buf, offset, value)
    return bytes(buf)


@dataclass
class _Session:
    """Server-side state, so nodeids, handles and backing ids stay consistent."""

    rng: random.Random
    t: _Templates
    unique: int = 0
    nodes: dict[int, int] = field(default_factory=lambda: {FUSE_ROOT_ID: 1})  # nodeid → lookups
    by_name: dict[int, int] = field(default_factory=dict)  # name index → nodeid
    name_of: dict[int, int] = field(default_factory=dict)  # nodeid → name index
    files: list[tuple[int, int, int]] = field(default_factory=list)  # (fh, nodeid, backing id)
    next_node: int = 2
    next_fh: int = 1
    next_backing: int = 1

    def request(self, template: bytes, nodeid: int, *fields: Field,
                cut: int | None = None, **meta: Any) -> tuple[int, Item]:
        self.unique += 2  # the kernel steps uniques by 2 (FUSE_REQ_ID_STEP)
        raw = _patch(template, _in("unique", self.unique), _in("nodeid", nodeid), *fields, cut=cut)
        return self.unique, (Kind.REQUEST, raw, meta)

    def reply(self, template: bytes, unique: int, *fields: Field,
              cut: int | None = None, **meta: Any) -> Item:
        return Kind.REPLY, _patch(template, _out("unique", unique), *fields, cut=cut), meta

    def error(self, unique: int, err: int) -> Item:
        return self.reply(self.t.error, unique, _out("error", -err))

    # Each operation returns its items; the last one is the reply (when there is one).

    def init(self) -> list[Item]:
        u, req = self.request(self.t.init, 0,
                              reason="masked FUSE_OVER_IO_URING: the proxy cannot relay io_uring")
        req[2]["original"] = _patch(self.t.init_offered, _in("unique", u))
        return [req, self.reply(self.t.init_reply, u)]

    def lookup(self) -> list[Item]:
        name = self.rng.randrange(NAMES)
        u, req = self.request(self.t.lookup[name], FUSE_ROOT_ID)
        if name not in self.by_name and self.rng.random() < 0.3:
            return [req, self.error(u, errno.ENOENT)]
        node = self.by_name.get(name)
        if node is None:
            node = self.by_name[name] = self.next_node
            self.name_of[node] = name
            self.next_node += 1
        self.nodes[node] = self.nodes.get(node, 0) + 1
        size = self.rng.randrange(1 << 20)
        return [req, self.reply(self.t.entry, u, _rep(FuseEntryOut, "nodeid", node),
                                _rep(FuseEntryOut, "attr.ino", node),
                                _rep(FuseEntryOut, "attr.size", size))]

    def getattr(self) -> list[Item]:
        node = self._some_node()
        u, req = self.request(self.t.getattr, node)
        return [req, self.reply(self.t.attr, u, _rep(FuseAttrOut, "attr.ino", node),
                                _rep(FuseAttrOut, "attr.size", 4096))]

    def _some_node(self) -> int:
        node = self.by_name.get(self.rng.randrange(NAMES), FUSE_ROOT_ID)
        return node if node in self.nodes else FUSE_ROOT_ID

    def open(self) -> list[Item]:
        node = self._some_node()
        if node == FUSE_ROOT_ID:
            return self.lookup()
        if len(self.files) >= 32:
            return self.release()
        modes = {bool(b) for _, n, b in self.files if n == node}
        if True in modes:  # the kernel refuses a second backing file for an open inode
            return self.getattr()
        u, req = self.request(self.t.open, node)
        if self.rng.random() < 0.05:
            return [req, self.error(u, errno.EACCES)]
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        items = [req]
        backing = 0
        if not modes and self.rng.random() < 0.5:  # nor mixes passthrough and cached opens
            backing, self.next_backing = self.next_backing, self.next_backing + 1
            fd = 10 + len(self.files)
            items.append((Kind.IOCTL, None, {
                "cmd": int(DevIoctl.BACKING_OPEN), "arg": _patch(self.t.backing_map, _at(FuseBackingMap, "fd", fd)),
                "result": backing, "errno": 0, "tid": 4243, "pid": 4243, "fd": fd,
                "path": f"/srv/data/node{node}", "out": None}))
            items.append(self.reply(self.t.opened, u, _rep(FuseOpenOut, "fh", fh),
                                    _rep(FuseOpenOut, "open_flags", FOPEN_PASSTHROUGH),
                                    _rep(FuseOpenOut, "backing_id", backing)))
        else:
            items.append(self.reply(self.t.opened, u, _rep(FuseOpenOut, "fh", fh)))
        self.files.append((fh, node, backing))
        return items

    def _plain_file(self) -> tuple[int, int] | None:
        if not self.files:
            return None
        fh, node, backing = self.files[self.rng.randrange(len(self.files))]
        return None if backing else (fh, node)

    def read(self) -> list[Item]:
        picked = self._plain_file()
        if picked is None:
            return self.open()
        fh, node = picked
        size = self.rng.choice((4096, 16384, 131072))
        got = self.rng.choice((size, size, size // 2, 0))
        u, req = self.request(self.t.read, node, _req(FuseReadIn, "fh", fh),
                              _req(FuseReadIn, "offset", 4096 * self.rng.randrange(64)),
                              _req(FuseReadIn, "size", size))
        snap = OUT_HEADER_SIZE + min(got, SNAPLEN)
        reply = self.reply(self.t.data_reply, u, _out("len", OUT_HEADER_SIZE + got), cut=snap)
        if got > SNAPLEN:
            reply[2]["len"] = OUT_HEADER_SIZE + got
        return [req, reply]

    def write(self) -> list[Item]:
        picked = self._plain_file()
        if picked is None:
            return self.open()
        fh, node = picked
        size = self.rng.choice((10, 4096, 65536))
        u, req = self.request(self.t.write, node, _in("len", _WRITE_DATA_AT + size),
                              _req(FuseWriteIn, "fh", fh),
                              _req(FuseWriteIn, "offset", 4096 * self.rng.randrange(64)),
                              _req(FuseWriteIn, "size", size),
                              cut=_WRITE_DATA_AT + min(size, SNAPLEN))
        if size > SNAPLEN:
            req[2]["len"] = _WRITE_DATA_AT + size
        return [req, self.reply(self.t.written, u, _rep(FuseWriteOut, "size", size))]

    def release(self) -> list[Item]:
        if not self.files:
            return self.getattr()
        fh, node, backing = self.files.pop(self.rng.randrange(len(self.files)))
        u, req = self.request(self.t.release, node, _req(FuseReleaseIn, "fh", fh))
        items = [req, self.reply(self.t.error, u)]
        if backing:
            items.append((Kind.IOCTL, None, {
                "cmd": int(DevIoctl.BACKING_CLOSE),
                "arg": _patch(self.t.backing_id, _at(FuseIoctlU32, "value", backing)),
                "result": 0, "errno": 0, "tid": 4243, "pid": 4243, "fd": None, "path": None,
                "out": None}))
        return items

    def forget(self) -> list[Item]:
        node = self._some_node()
        if node == FUSE_ROOT_ID or any(n == node for _, n, _ in self.files):
            return self.getattr()
        lookups = self.nodes.pop(node)
        del self.by_name[self.name_of.pop(node)]
        _, req = self.request(self.t.forget, node, _req(FuseForgetIn, "nlookup", lookups))
        return [req]

    def notify(self) -> list[Item]:
        node = self._some_node()
        return [(Kind.REPLY, _patch(self.t.inval_inode, _rep(FuseNotifyInvalInodeOut, "ino", node)),
                 {})]


_OPS = ("lookup", "getattr", "open", "read", "write", "release", "forget", "notify")
_WEIGHTS = (22, 20, 8, 20, 10, 7, 5, 1)


def _items(seed: int) -> Iterator[Item]:
    """An endless, consistent session; some replies come after the next operation's."""
    rng = random.Random(seed)
    session = _Session(rng, _templates())
    yield from session.init()
    held: list[Item] = []
    while True:
        op = rng.choices(_OPS, _WEIGHTS)[0]
        items = getattr(session, op)()
        if op in ("lookup", "getattr") and len(items) == 2 and not held and rng.random() < 0.1:
            yield items[0]
            held = items[1:]
            continue
        yield from items
        yield from held
        held = []


def synthetic_trace(path: str | os.PathLike[str], n_records: int, seed: int = 0) -> dict[str, Any]:
    """Write a realistic trace of exactly `n_records` records (the last is session_end);
    the same seed gives the same records. Returns the header written."""
    rng = random.Random(seed ^ 0x5EED)
    ts = 1_000_000_000_000 + seed
    header = {"kernel": "6.18.0-synthetic", "argv": ["passthrough_hp", "/srv/data", "/mnt/fuse"],
              "mountpoint": "/mnt/fuse", "options": ["default_permissions"], "snaplen": SNAPLEN,
              "source": "synthetic", "seed": seed}
    items = _items(seed)
    with TraceWriter(path, header) as writer:
        left = max(n_records - 1, 0)
        while left > 0:
            with writer.batch() as batch:
                for _ in range(min(left, 4096)):
                    kind, raw, meta = next(items)
                    ts += rng.randrange(2_000, 40_000)
                    if kind is Kind.REQUEST:
                        batch.request(raw, ts=ts, **meta)
                    elif kind is Kind.REPLY:
                        batch.reply(raw, ts=ts, **meta)
                    else:
                        batch.ioctl(ts=ts, **meta)
            left -= min(left, 4096)
        if n_records > 0:
            writer.event("session_end", ts=ts + 1000, records=n_records)
        return writer.header
