"""`fusetrace export --pcapng` read by the real tshark with the generated Lua dissector:
on a session recorded live, every message shows the same fields, values and value texts
as the Scapy dissectors decode (`fusetrace show -v`), replies are paired with their
requests, timestamps keep the ns, and damaged traces are refused without a file."""

from __future__ import annotations

import errno
import os
import random
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from scapy.config import conf
from scapy.fields import FieldListField, PacketField, PacketListField, StrField
from scapy.packet import NoPayload, Packet

from dissectors import fields as fuse_fields
from dissectors.constants import (
    FOPEN_PASSTHROUGH,
    FUSE_INIT_EXT,
    FUSE_IOCTL_RETRY,
    FUSE_PASSTHROUGH,
    FUSE_PASSTHROUGH_ANDROID,
    FUSE_SETXATTR_EXT,
    NotifyCode,
    Opcode,
)
from dissectors.ioctls import DevIoctl, FuseBackingMap, FuseIoctlRaw, FuseIoctlU32, FusePassthroughOut
from dissectors.structs import (
    FuseAttrCompat,
    FuseAttrOut,
    FuseAttrOutCompat,
    FuseBatchForgetIn,
    FuseData,
    FuseDirent,
    FuseDirentList,
    FuseEntryOutCompat,
    FuseExtensionList,
    FuseExtHeader,
    FuseFlushIn,
    FuseForgetList,
    FuseForgetOne,
    FuseGetattrIn,
    FuseGetxattrIn,
    FuseGetxattrOut,
    FuseInHeader,
    FuseInitIn,
    FuseInitInCompat,
    FuseInitOut,
    FuseIoctlIn,
    FuseIoctlIovec,
    FuseIoctlIovecList,
    FuseIoctlOut,
    FuseLseekIn,
    FuseLseekOut,
    FuseMkdirIn,
    FuseName,
    FuseNotifyInvalEntryOut,
    FuseNotifyStoreOut,
    FuseOpenIn,
    FuseOpenOutAndroid,
    FuseOutHeader,
    FuseRaw,
    FuseReadIn,
    FuseReadInCompat,
    FuseReleaseIn,
    FuseSetxattrIn,
    FuseSetxattrInCompat,
    FuseStatx,
    FuseStatxIn,
    FuseStatxOut,
    FuseStruct,
    FuseWriteIn,
    FuseWriteOut,
)
from inspector.damaged import warning
from inspector.export.wireshark import _Collector, layer_id, plugin_text
from inspector.timeline import Entry, entries, event_text
from traces import TraceReader, TraceWriter
from traces.testing import synthetic_trace
from export_support import damaged_copies, record_session
from record_support import FUSETRACE, REPO, fusetrace

pytestmark = [pytest.mark.requires_fuse, pytest.mark.timeout(180)]

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed "
                                  "(Debian package tshark, listed in .ci/install)")


TRUNCATED = " [truncated]"


@dataclass
class Shown:
    """One field as tshark shows it."""

    name: str
    show: str
    showname: str
    value: str


def _tshark(pcap: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([TSHARK or "tshark", *args, "-r", str(pcap)], capture_output=True,
                          timeout=120, env=env)
    # Wireshark cuts labels at 240 bytes, inside a UTF-8 sequence if it must
    out, err = done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, err
    assert "Lua Error" not in out and "Lua Error" not in err, out[:4000]
    return out


def _packets(pdml: str) -> list[dict[str, Any]]:
    """Per packet: the frame's fields and the fuse fields in tree order."""
    out = []
    for packet in ET.fromstring(pdml).iter("packet"):
        frame: dict[str, str] = {}
        fuse: list[Shown] = []
        for proto in packet.findall("proto"):
            for fld in proto.iter("field"):
                name = fld.get("name", "")
                if proto.get("name") == "fuse" and name.startswith("fuse."):
                    fuse.append(Shown(name, fld.get("show", ""), fld.get("showname", ""),
                                      fld.get("value", "")))
                elif name.startswith("frame."):
                    frame[name] = fld.get("show", "")
        out.append({"frame": frame, "fuse": fuse})
    return out


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_session(tmp_path_factory.mktemp("pcapng"))


@pytest.fixture(scope="module")
def plugin(session: Path) -> Path:
    env = {**os.environ, "XDG_CACHE_HOME": str(session.parent / "cache")}
    done = fusetrace("wireshark-plugin", env=env)
    assert done.returncode == 0 and not done.stderr, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_file() and path.is_relative_to(session.parent / "cache")
    return path


@pytest.fixture(scope="module")
def pcap(session: Path) -> Path:
    out = session.parent / "session.pcapng"
    done = fusetrace("export", "--pcapng", "-o", str(out), str(session))
    assert done.returncode == 0 and not done.stderr, done.stderr
    return out


@pytest.fixture(scope="module")
def shown(pcap: Path, plugin: Path) -> list[dict[str, Any]]:
    return _packets(_tshark(pcap, "-X", f"lua_script:{plugin}", "-T", "pdml"))


@pytest.fixture(scope="module")
def decoded(session: Path) -> list[Entry]:
    with TraceReader(session) as reader:
        return list(entries(reader))


def expected_fields(pkt: Packet) -> Iterator[tuple[str, Any, Any, str | None]]:
    """(filter name, Scapy field, value, value text or None) for every field Wireshark
    shows, in tree order: what `show -v` prints, layer by layer."""
    layer = pkt
    while not isinstance(layer, NoPayload):
        if isinstance(layer, conf.padding_layer):
            break
        yield from _layer_fields(layer)
        layer = layer.payload


def _layer_fields(layer: Packet) -> Iterator[tuple[str, Any, Any, str | None]]:
    lid = layer_id(type(layer))
    for fld in layer.fields_desc:
        value = layer.getfieldval(fld.name)
        name = f"fuse.{lid}.{fld.name}"
        if isinstance(fld, fuse_fields.NoteField):
            continue
        if isinstance(fld, PacketField):
            yield from _layer_fields(value)
        elif isinstance(fld, PacketListField):
            for item in value:
                yield from _layer_fields(item)
        elif isinstance(fld, FieldListField):
            for item in value:
                yield name, fld, item, fld.field.i2repr(layer, item)
        elif isinstance(fld, StrField) and not isinstance(fld, fuse_fields.CStringField):
            if value:  # empty byte strings are not shown (a C string's NUL is)
                yield name, fld, value, None
        else:
            yield name, fld, value, fld.i2repr(layer, value)


def _check_field(got: Shown, name: str, fld: Any, value: Any, text: str | None) -> None:
    assert got.name == name, (got, name)
    if isinstance(value, bytes):  # the bytes the field covers; a C string's hold its NUL
        assert got.value in (value.hex(), value.hex() + "00"), (got, value)
        name_text = value.decode("utf-8", "replace")
        if isinstance(fld, fuse_fields.CStringField) and name_text.isprintable() and (
                "\ufffd" not in name_text):  # Wireshark escapes or replaces the others its way
            assert got.show == name_text, (got, value)
        return
    assert int(got.show, 0) == value, (got, value)
    label = f"{fld.name}: {text}"
    if got.showname.startswith(TRUNCATED):  # Wireshark cuts labels at 240 bytes
        assert label.startswith(got.showname[len(TRUNCATED):]) and len(label) > 200, (got, label)
    else:
        assert got.showname == label, (got, text)


def compare_ioctls(shown: list[dict[str, Any]], decoded: list[Entry]) -> int:
    """Each ioctl by its name in the connection's dialect, its outcome and the argument's
    fields as `show` names them (`backing_id=`, `fd=` ...); returns how many had fields."""
    with_fields = 0
    for packet, entry in zip(shown, decoded):
        call = entry.ioctl
        if call is None:
            continue
        names = {f.name: f for f in packet["fuse"]}
        assert names["fuse.ioctl.cmd"].showname.startswith(f"cmd: {call.name} ")
        assert int(names["fuse.ioctl.result"].show) == call.result
        assert int(names["fuse.ioctl.errno"].show) == call.errno
        for name, value in call.fields.items():
            found = [f for f in packet["fuse"] if f.name.endswith(f".{name}")]
            assert len(found) == 1 and int(found[0].show, 0) == value, (name, value, found)
        with_fields += bool(call.fields)
    return with_fields


def _message_fields(shown_fields: list[Shown]) -> list[Shown]:
    skip = ("fuse.encap.", "fuse.pair.", "fuse.reason", "fuse.trailing")
    return [f for f in shown_fields if not f.name.startswith(skip)]


@needs_tshark
def test_every_record_is_a_packet_at_its_ns(shown: list[dict[str, Any]],
                                             decoded: list[Entry]) -> None:
    assert len(shown) == len(decoded)
    for packet, entry in zip(shown, decoded):
        rec = entry.record
        assert Decimal(packet["frame"]["frame.time_epoch"]) * 10**9 == rec.ts
        encap = {f.name: f.show for f in packet["fuse"] if f.name.startswith("fuse.encap.")}
        assert int(encap["fuse.encap.record"]) == rec.index
        frame_len, cap_len = int(packet["frame"]["frame.len"]), int(packet["frame"]["frame.cap_len"])
        assert frame_len == (24 + rec.true_len if rec.raw is not None else cap_len)
        assert cap_len == 24 + len(rec.raw) if rec.raw is not None else cap_len > 24


def compare_messages(shown: list[dict[str, Any]], decoded: list[Entry]) -> tuple[int, int]:
    """Each request, reply and notification as tshark shows it against its Scapy packet,
    field by field: the filter name, the value, and the value's text as `show -v` prints
    it; raw layers where Scapy has them. Returns (fields, raw layers) compared."""
    assert len(shown) == len(decoded)
    checked = raw = 0
    for packet, entry in zip(shown, decoded):
        if entry.message is None:
            continue
        pkt = entry.message.packet()
        want = list(expected_fields(pkt))
        got = _message_fields(packet["fuse"])
        assert [g.name for g in got] == [w[0] for w in want], entry.record.index
        for g, w in zip(got, want):
            _check_field(g, *w)
        raws = sum(1 for layer in _layers(pkt) if isinstance(layer, FuseRaw))
        assert raws == sum(1 for f in packet["fuse"] if f.name == "fuse.reason"), entry.record.index
        checked += len(want)
        raw += raws
    return checked, raw


@needs_tshark
def test_every_message_shows_the_dissectors_fields(shown: list[dict[str, Any]],
                                                   decoded: list[Entry]) -> None:
    checked, _ = compare_messages(shown, decoded)
    assert checked > 1000  # the session holds a few hundred messages


def _layers(pkt: Packet) -> Iterator[Packet]:
    while not isinstance(pkt, NoPayload):
        yield pkt
        pkt = pkt.payload


@needs_tshark
def test_replies_decode_by_their_requests_opcode(shown: list[dict[str, Any]],
                                                 decoded: list[Entry]) -> None:
    paired = 0
    for packet, entry in zip(shown, decoded):
        if entry.message is None or entry.message.brief.direction != "reply":
            continue
        pair = {f.name: f for f in packet["fuse"] if f.name.startswith("fuse.pair.")}
        assert entry.request_index is not None
        assert int(pair["fuse.pair.request_in"].show) == entry.request_index + 1
        opcode = entry.message.brief.opcode
        assert int(pair["fuse.pair.opcode"].show) == opcode
        paired += 1
    assert paired > 50


@needs_tshark
def test_two_passes_link_requests_to_their_replies(pcap: Path, plugin: Path,
                                                   decoded: list[Entry]) -> None:
    """With tshark -2 (and in Wireshark) a request also links forward to its reply."""
    text = _tshark(pcap, "-2", "-X", f"lua_script:{plugin}", "-T", "fields",
                   "-e", "frame.number", "-e", "fuse.pair.reply_in")
    reply_in = {int(n): int(r) for n, r in (line.split("\t") for line in text.splitlines()) if r}
    want = {e.request_index + 1: e.record.index + 1 for e in decoded
            if e.request_index is not None}
    assert reply_in == want and len(want) > 50


@needs_tshark
def test_ioctls_events_and_passthrough(shown: list[dict[str, Any]], decoded: list[Entry]) -> None:
    """Ioctls by their names in the connection's dialect with their argument fields
    (the backing id a BACKING_CLOSE names), events by their text; the opens that used a
    backing id show it and FOPEN_PASSTHROUGH."""
    opened, closed, passthrough = set(), set(), set()
    for packet, entry in zip(shown, decoded):
        fields = {f.name: f for f in packet["fuse"]}
        if entry.ioctl is not None:
            call = entry.ioctl
            assert fields["fuse.ioctl.cmd"].showname.startswith(f"cmd: {call.name} ")
            assert int(fields["fuse.ioctl.result"].show) == call.result
            arg = call.packet()
            if isinstance(arg, FuseIoctlU32):
                ((name, value),) = call.fields.items()
                assert int(fields[f"fuse.ioctl.{name}"].show) == value
                if name == "backing_id":
                    closed.add(value)
            elif not isinstance(arg, FuseIoctlRaw):
                for name, fld, value, text in expected_fields(arg):
                    _check_field(fields[name], name, fld, value, text)
                if call.errno == 0 and call.name.endswith("BACKING_OPEN"):
                    opened.add(call.result)
        elif entry.message is None:
            assert fields["fuse.event"].show == event_text(entry.record)
        elif "fuse.open_out.backing_id" in fields:
            if "PASSTHROUGH" in fields["fuse.open_out.open_flags"].showname:
                passthrough.add(int(fields["fuse.open_out.backing_id"].show))
    assert opened and opened == closed and passthrough <= opened, (opened, closed, passthrough)


@needs_tshark
def test_the_installed_plugin_loads_without_x(pcap: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = fusetrace("wireshark-plugin", "--install", env=env)
    assert done.returncode == 0 and not done.stderr, done.stderr
    target = tmp_path / ".local/lib/wireshark/plugins/fusetrace.lua"
    assert Path(done.stdout.strip()) == target and target.read_text() == plugin_text()
    text = _tshark(pcap, "-Y", "fuse.open_out.backing_id", env=env)
    assert "OPEN reply" in text or "CREATE reply" in text


def test_an_independent_reader_reads_every_block(pcap: Path, decoded: list[Entry]) -> None:
    """Scapy's pcapng reader: one USER0 interface at ns resolution, every record's bytes
    after the 24-byte header, the recorder's notes as comments."""
    from scapy.utils import PcapNgReader

    with PcapNgReader(str(pcap)) as reader:
        packets = list(reader)
        assert [(i[0], i[2]["tsresol"]) for i in reader.interfaces] == [(147, 10**9)]
    assert len(packets) == len(decoded)
    for pkt, entry in zip(packets, decoded):
        data, rec = bytes(pkt), entry.record
        assert int(pkt.time * 10**9) == rec.ts
        assert int.from_bytes(data[16:24], "little") == rec.index and data[1] == rec.kind
        if rec.raw is not None:
            assert data[24:] == rec.raw


def test_stdout_is_the_same_capture(session: Path, pcap: Path) -> None:
    done = subprocess.run([*FUSETRACE, "export", "--pcapng", "-o", "-", str(session)],
                          capture_output=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == pcap.read_bytes()


@pytest.mark.parametrize("damage", ["cut", "garbled"])
def test_a_damaged_trace_exports_its_good_records(session: Path, tmp_path: Path,
                                                  damage: str) -> None:
    """The damaged-trace rule: every record before the damage is a packet, to a file and
    to standard output alike, then one warning line on stderr and exit 3."""
    bad = damaged_copies(session, tmp_path)[damage]
    with TraceReader(bad) as reader:
        good = sum(1 for _ in reader)
        tail = reader.tail
    assert tail is not None
    out = tmp_path / "out.pcapng"
    done = subprocess.run([*FUSETRACE, "export", "--pcapng", "-o", str(out), str(bad)],
                          capture_output=True, timeout=60, cwd=REPO)
    piped = subprocess.run([*FUSETRACE, "export", "--pcapng", "-o", "-", str(bad)],
                           capture_output=True, timeout=60, cwd=REPO)
    for run in (done, piped):
        assert run.returncode == 3
        assert run.stderr.decode() == warning(str(bad), tail) + "\n"
    data = out.read_bytes()
    assert piped.stdout == data
    kinds, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        kinds.append(kind)
        at += length
    assert kinds.count(6) == good  # enhanced packet blocks
    assert not list(tmp_path.glob(".*")), "no temporary file left behind"


def test_a_field_added_to_a_struct_appears_in_the_plugin() -> None:
    """The generator reads fields_desc: a struct with one more field gets one more op."""
    from scapy.fields import LEIntField

    from dissectors.structs import FuseOpenOut

    class FuseOpenOutPlus(FuseStruct):
        name = "fuse_open_out_plus"
        fields_desc = [*FuseOpenOut.fields_desc, LEIntField("new_field", 0)]

    got = _Collector()
    ops = got.layers[got.layer(FuseOpenOutPlus)]["ops"]
    assert [op["n"] for op in ops] == [f.name for f in FuseOpenOut.fields_desc] + ["new_field"]
    assert 'n="backing_id"' in plugin_text() and 'PASSTHROUGH' in plugin_text()


# --- crafted sessions: what a live session with the bundled server does not show -------

class Crafted:
    """A FUSE conversation written record by record with the Scapy structs."""

    def __init__(self, path: Path) -> None:
        self.writer = TraceWriter(path, {"source": "test"})
        self.ts = 10**9 + 123
        self.unique = 0

    def _tick(self) -> int:
        self.ts += 1_000_001
        return self.ts

    def request(self, opcode: int, body: Packet | bytes = b"", nodeid: int = 1,
                **hdr: Any) -> int:
        self.unique += 2
        raw = bytes(FuseInHeader(opcode=opcode, unique=self.unique, nodeid=nodeid, **hdr) / body)
        self.writer.request(raw, ts=self._tick())
        return self.unique

    def reply(self, unique: int, body: Packet | bytes = b"", error: int = 0, **meta: Any) -> None:
        self.writer.reply(bytes(FuseOutHeader(unique=unique, error=error) / body),
                          ts=self._tick(), **meta)

    def exchange(self, opcode: int, body: Packet | bytes, answer: Packet | bytes = b"",
                 error: int = 0, nodeid: int = 1, **meta: Any) -> None:
        self.reply(self.request(opcode, body, nodeid), answer, error, **meta)

    def ioctl(self, cmd: int, arg: bytes, result: int, err: int = 0) -> None:
        self.writer.ioctl(cmd=cmd, arg=arg, result=result, errno=err, ts=self._tick(),
                          pid=7, tid=8, path="/src/f")

    def init(self, minor: int, flags: int, compat_in: bool = False) -> None:
        asked = (FuseInitInCompat(minor=minor, flags=flags & 0xFFFFFFFF) if compat_in
                 else FuseInitIn(minor=minor, flags=flags & 0xFFFFFFFF, flags2=flags >> 32))
        self.exchange(Opcode.INIT, asked, FuseInitOut(minor=minor, flags=flags & 0xFFFFFFFF,
                                                      flags2=flags >> 32, max_write=1 << 17),
                      nodeid=0)


def _android(c: Crafted) -> None:
    """Android's passthrough before 7.36: INIT bit 31, PASSTHROUGH_OPEN ioctls, passthrough_fh."""
    c.init(35, FUSE_PASSTHROUGH_ANDROID | 1, compat_in=True)
    c.ioctl(DevIoctl.BACKING_OPEN, bytes(FusePassthroughOut(fd=5)), 3)
    c.ioctl(DevIoctl.PASSTHROUGH_OPEN_V2, struct.pack("<I", 6), 4)
    c.ioctl(DevIoctl.PASSTHROUGH_OPEN_V1, bytes(5), -1, errno.EINVAL)
    c.exchange(Opcode.OPEN, FuseOpenIn(flags=os.O_RDWR),
               FuseOpenOutAndroid(fh=9, open_flags=FOPEN_PASSTHROUGH, passthrough_fh=3), nodeid=2)
    c.exchange(Opcode.SETXATTR, FuseSetxattrInCompat(size=2) / FuseName(name=b"user.a") / FuseData(data=b"hi"))


def _old_kernel(c: Crafted) -> None:
    """A 7.8 connection: the compat structs of replies and requests."""
    c.init(8, 0)
    c.exchange(Opcode.LOOKUP, FuseName(name=b"old"), FuseEntryOutCompat(
        nodeid=2, attr=FuseAttrCompat(mode=0o40755, nlink=2)))
    c.exchange(Opcode.GETATTR, b"", FuseAttrOutCompat(attr=FuseAttrCompat(mode=0o100600)), nodeid=2)
    c.exchange(Opcode.READ, FuseReadInCompat(fh=1, size=10), FuseData(data=b"0123456789"), nodeid=2)


def _odd(c: Crafted) -> None:
    """Lists, notifications, ioctl retries, extensions, the recorder's notes and the
    bodies Scapy leaves raw."""
    c.init(45, FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_PASSTHROUGH)
    c.ioctl(DevIoctl.BACKING_OPEN, bytes(FuseBackingMap(fd=4)), 1)
    c.ioctl(DevIoctl.BACKING_CLOSE, struct.pack("<I", 1), 0)
    c.ioctl(DevIoctl.CLONE, struct.pack("<I", 3), 0)
    c.ioctl(DevIoctl.SYNC_INIT, b"", -1, errno.ENOTTY)
    c.ioctl(0x1234, b"\x01", -1, errno.ENOTTY)
    ask = FuseGetxattrIn(size=0) / FuseName(name=b"user.x")
    c.exchange(Opcode.GETXATTR, ask, FuseGetxattrOut(size=12))
    c.exchange(Opcode.GETXATTR, FuseGetxattrIn(size=64) / FuseName(name=b"user.x"),
               FuseData(data=b"value\0of\0xattr"))
    c.exchange(Opcode.SETXATTR, FuseSetxattrIn(size=1, setxattr_flags=1) / FuseName(name=b"n") / FuseData(data=b"v"))
    c.request(Opcode.BATCH_FORGET, FuseBatchForgetIn(count=3) / FuseForgetList(
        forgets=[FuseForgetOne(nodeid=n, nlookup=n * 2) for n in (5, 6, 7)]))
    c.request(Opcode.BATCH_FORGET, FuseBatchForgetIn(count=4) / FuseForgetList(
        forgets=[FuseForgetOne(nodeid=9, nlookup=1)]))  # fewer than its count
    c.exchange(Opcode.IOCTL, FuseIoctlIn(fh=1, cmd=0x80045401, in_size=4) / FuseData(data=b"abcd"),
               FuseIoctlOut(flags=FUSE_IOCTL_RETRY, in_iovs=1, out_iovs=1) / FuseIoctlIovecList(
                   iovecs=[FuseIoctlIovec(base=0x7FFF0000, len=4), FuseIoctlIovec(base=0x10, len=8)]))
    c.exchange(Opcode.IOCTL, FuseIoctlIn(fh=1, cmd=0x5401), FuseIoctlOut(result=3) / FuseData(data=b"out"))
    c.exchange(Opcode.READDIR, FuseReadIn(fh=2, size=4096), FuseDirentList(dirents=[
        FuseDirent(ino=1, off=1, type=4, name=b"."), FuseDirent(ino=2, off=2, type=4, name=b".."),
        FuseDirent(ino=77, off=3, type=8, name=b"a-longer-name.txt")]))
    ext = FuseExtensionList(extensions=[FuseExtHeader(type=32, data=struct.pack("<II", 1, 1000))])
    c.reply(c.request(Opcode.MKDIR, FuseMkdirIn(mode=0o755, umask=0o22) / FuseName(name=b"d") / ext,
                      total_extlen=len(bytes(ext)) // 8), b"", error=-errno.EEXIST)
    c.exchange(Opcode.LSEEK, FuseLseekIn(fh=1, offset=10, whence=3), FuseLseekOut(offset=4096))
    c.exchange(Opcode.STATX, FuseStatxIn(fh=1, sx_mask=0x7FF), FuseStatxOut(stat=FuseStatx(
        mask=0x7FF, mode=0o100644, nlink=1)))
    c.exchange(Opcode.WRITE, FuseWriteIn(fh=1, size=9000) / FuseData(data=b"w" * 64),
               FuseWriteOut(size=9000))
    c.writer.request(bytes(FuseInHeader(opcode=Opcode.READ, unique=999, nodeid=2) /
                           FuseReadIn(fh=1, size=100)), ts=c._tick())
    c.writer.reply(bytes(FuseOutHeader(unique=999) / FuseData(data=b"r" * 100))[:60],
                   ts=c._tick(), len=116)  # cut by the snap length
    c.exchange(Opcode.FLUSH, FuseFlushIn(fh=1), b"", write_errno=errno.EINVAL)
    c.reply(0, FuseNotifyInvalEntryOut(parent=1) / FuseName(name=b"gone"), error=NotifyCode.INVAL_ENTRY)
    c.reply(0, FuseNotifyStoreOut(nodeid=2, offset=0) / FuseData(data=b"stored"), error=NotifyCode.STORE)
    c.reply(0, b"\x01\x02", error=99)  # unknown notify code
    c.exchange(Opcode.OPEN, b"\x00\x00\x00\x00", b"", error=-errno.EIO)  # a short OPEN request
    c.exchange(77, b"abc", b"xyz")  # an unknown opcode
    c.reply(4242, FuseAttrOut())  # a reply to no request
    c.exchange(Opcode.GETATTR, FuseGetattrIn(), b"\x00" * 8)  # a short reply
    c.exchange(Opcode.RELEASE, FuseReleaseIn(fh=1), b"extra", error=0)  # bytes after nothing
    c.writer.event("session_end", reason="unmounted", ts=c._tick())


def _shown_and_decoded(trace: Path, out: Path, tmp_path: Path) -> tuple[list[Any], list[Any]]:
    """What tshark with the generated plugin shows of `out` (the export of `trace`), and
    what the dissectors decode of the trace itself, message by message."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    plugin = fusetrace("wireshark-plugin", env=env).stdout.strip()
    shown = _packets(_tshark(out, "-X", f"lua_script:{plugin}", "-T", "pdml"))
    with TraceReader(trace) as reader:
        return shown, list(entries(reader))


@needs_tshark
@pytest.mark.parametrize("make", [_android, _old_kernel, _odd])
def test_crafted_sessions_show_the_dissectors_fields(tmp_path: Path, make: Any) -> None:
    trace, out = tmp_path / "t.fzt", tmp_path / "t.pcapng"
    c = Crafted(trace)
    make(c)
    c.writer.close()
    done = fusetrace("export", "--pcapng", "-o", str(out), str(trace))
    assert done.returncode == 0, done.stderr
    shown, decoded = _shown_and_decoded(trace, out, tmp_path)
    checked, raw = compare_messages(shown, decoded)
    assert checked > 20
    if make is _odd:
        assert raw >= 5
    assert compare_ioctls(shown, decoded) >= (3 if make is _odd else 0)


@needs_tshark
def test_synthetic_session_shows_the_dissectors_fields(tmp_path: Path) -> None:
    """traces.testing's session: out-of-order replies, notifications, an altered INIT,
    data cut by the snap length (the packets keep the true length)."""
    trace, out = tmp_path / "s.fzt", tmp_path / "s.pcapng"
    synthetic_trace(trace, 3000, seed=3)
    assert fusetrace("export", "--pcapng", "-o", str(out), str(trace)).returncode == 0
    shown, decoded = _shown_and_decoded(trace, out, tmp_path)
    checked, _ = compare_messages(shown, decoded)
    assert checked > 10000
    cut = [p for p, e in zip(shown, decoded) if e.record.truncated]
    assert cut and all("snap" in p["frame"].get("frame.comment", "") for p in cut)
    assert all(int(p["frame"]["frame.len"]) > int(p["frame"]["frame.cap_len"]) for p in cut)


def _garbage(c: Crafted, seed: int, n: int = 700) -> None:
    """Random opcodes and bodies, random replies and notifications, over a connection
    whose minor and flags come from the seed: every corner the plans and lists have."""
    rng = random.Random(seed)
    minor = (8, 11, 22, 35, 45)[seed % 5]
    flags = rng.getrandbits(64) & (FUSE_INIT_EXT | FUSE_SETXATTR_EXT | FUSE_PASSTHROUGH
                                   | FUSE_PASSTHROUGH_ANDROID | 1 << 63)
    c.init(minor, flags)
    opcodes = list(Opcode)

    def noise(sizes: tuple[int, ...]) -> bytes:
        size = rng.choice(sizes)
        return bytes(size) if rng.random() < 0.3 else rng.randbytes(size)

    for _ in range(n):
        opcode = rng.choice(opcodes) if rng.random() < 0.95 else rng.randint(0, 5000)
        unique = c.request(opcode, noise((0, 1, 4, 8, 16, 24, 40, 64, 100, 200)),
                           total_extlen=rng.choice((0, 0, 0, 1, 2)))
        answer, roll = noise((0, 1, 8, 16, 24, 32, 64, 80, 128, 160, 300)), rng.random()
        if roll < 0.7:
            c.reply(unique, answer)
        elif roll < 0.8:
            c.reply(unique, answer[:rng.randint(0, 8)], error=-rng.randint(1, 130))
        elif roll < 0.9:
            c.reply(0, answer, error=rng.randint(0, 12))
        elif roll < 0.95:
            cmd = rng.choice(list(DevIoctl)) if rng.random() < 0.8 else rng.getrandbits(32)
            c.ioctl(cmd, noise((0, 4, 4, 16, 16, 5)), rng.randint(-1, 9), rng.choice((0, 0, 22)))


@needs_tshark
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_garbage_shows_as_the_dissectors_decode_it(tmp_path: Path, seed: int) -> None:
    """Where Scapy leaves bytes raw (short, cut, unexpected, lists that end early or
    hold fewer than their count), the dissector does too, field for field."""
    trace, out = tmp_path / "g.fzt", tmp_path / "g.pcapng"
    c = Crafted(trace)
    _garbage(c, seed)
    c.writer.close()
    assert fusetrace("export", "--pcapng", "-o", str(out), str(trace)).returncode == 0
    shown, decoded = _shown_and_decoded(trace, out, tmp_path)
    checked, raw = compare_messages(shown, decoded)
    assert checked > 5000 and raw > 50
    assert compare_ioctls(shown, decoded) >= 3


def test_mutated_traces_export_whole_or_refuse(session: Path, tmp_path: Path) -> None:
    """Bytes flipped anywhere in a recorded trace: the export is made or refused with an
    ExportError or TraceReadError (one line at the command line), never another exception,
    and a refusal leaves no file."""
    from inspector.export.output import ExportError
    from inspector.export.pcapng import write_pcapng
    from traces import TraceReadError

    data, rng = session.read_bytes(), random.Random(16)
    made = refused = 0
    for n in range(60):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.getrandbits(8)
        trace, out = tmp_path / f"m{n}.fzt", tmp_path / f"m{n}.pcapng"
        trace.write_bytes(bytes(bad))
        try:
            write_pcapng(str(trace), str(out))
            made += 1
        except (ExportError, TraceReadError):
            assert not out.exists()
            refused += 1
    assert made and refused
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_unwritable_target_is_one_line(session: Path, tmp_path: Path) -> None:
    target = tmp_path / "no such dir" / "out.pcapng"
    done = fusetrace("export", "--pcapng", "-o", str(target), str(session))
    assert done.returncode == 2 and done.stderr == (
        f"fusetrace: error: cannot write {target}: No such file or directory\n")
