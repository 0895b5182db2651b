"""`fusetrace export --pcapng` read by the real tshark with the generated Lua dissector:
on a session recorded live, every message shows the same fields, values and value texts
as the Scapy dissectors decode (`fusetrace show -v`), replies are paired with their
requests, timestamps keep the ns, and damaged traces are refused without a file."""

from __future__ import annotations

import os
import shutil
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
from dissectors.ioctls import FuseIoctlRaw, FuseIoctlU32
from dissectors.structs import FuseRaw, FuseStruct
from inspector.export.wireshark import _Collector, layer_id, plugin_text
from inspector.timeline import Entry, entries, event_text
from traces import Kind, TraceReader
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
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "Lua Error" not in done.stdout and "Lua Error" not in done.stderr, done.stdout[:4000]
    return done.stdout


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
                yield name, fld.field, item, fld.field.i2repr(layer, item)
        elif isinstance(fld, StrField):
            if value:  # empty byte strings are not shown
                yield name, fld, value, None
        else:
            yield name, fld, value, fld.i2repr(layer, value)


def _check_field(got: Shown, name: str, fld: Any, value: Any, text: str | None) -> None:
    assert got.name == name, (got, name)
    if isinstance(value, bytes):
        if isinstance(fld, (fuse_fields.CStringField,)) or got.value != value.hex():
            assert got.show == value.decode("utf-8", "replace"), (got, value)
        return
    assert int(got.show, 0) == value, (got, value)
    label = f"{fld.name}: {text}"
    if got.showname.startswith(TRUNCATED):  # Wireshark cuts labels at 240 bytes
        assert label.startswith(got.showname[len(TRUNCATED):]) and len(label) > 200, (got, label)
    else:
        assert got.showname == label, (got, text)


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
        assert packet["frame"]["frame.len"] == str(24 + (rec.true_len if rec.raw is not None
                                                         else int(packet["frame"]["frame.cap_len"]) - 24))


@needs_tshark
def test_every_message_shows_the_dissectors_fields(shown: list[dict[str, Any]],
                                                   decoded: list[Entry]) -> None:
    """The Scapy packet of each request, reply and notification, field by field: the
    filter name, the value, and the value's text as `show -v` prints it."""
    checked = raw = 0
    for packet, entry in zip(shown, decoded):
        if entry.message is None:
            continue
        pkt = entry.message.packet()
        want = list(expected_fields(pkt))
        got = _message_fields(packet["fuse"])
        assert len(got) == len(want), (entry.record.index, [g.name for g in got],
                                       [w[0] for w in want])
        for g, w in zip(got, want):
            _check_field(g, *w)
        raws = sum(1 for layer in _layers(pkt) if isinstance(layer, FuseRaw))
        assert raws == sum(1 for f in packet["fuse"] if f.name == "fuse.reason")
        checked += len(want)
        raw += raws
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


def test_stdout_is_the_same_capture(session: Path, pcap: Path) -> None:
    done = subprocess.run([*FUSETRACE, "export", "--pcapng", "-o", "-", str(session)],
                          capture_output=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == pcap.read_bytes()


@pytest.mark.parametrize("damage", ["cut", "garbled"])
def test_a_damaged_trace_exports_nothing(session: Path, tmp_path: Path, damage: str) -> None:
    bad = damaged_copies(session, tmp_path)[damage]
    for target in ("out.pcapng", "-"):
        out = tmp_path / target if target != "-" else "-"
        done = fusetrace("export", "--pcapng", "-o", str(out), str(bad))
        assert done.returncode == 2, done
        assert len(done.stderr.splitlines()) == 1 and "nothing exported" in done.stderr
        assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.fzt", "garbled.fzt"]


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
