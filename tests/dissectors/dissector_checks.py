"""Assertions shared by the round-trip tests: decode, compare fields, rebuild."""

from __future__ import annotations

from scapy.fields import PacketField, PacketListField
from scapy.packet import NoPayload, Packet

from dissector_corpus import Case
from dissectors import FuseContext, FuseRaw, decode_reply, decode_request


def decode(case_or_raw: Case | bytes, kind: str = "request", ctx: FuseContext | None = None) -> Packet:
    if isinstance(case_or_raw, Case):
        kind, raw, ctx = case_or_raw.kind, case_or_raw.raw, case_or_raw.ctx
    else:
        raw = case_or_raw
    if kind == "request":
        return decode_request(raw, ctx) if ctx else decode_request(raw)
    return decode_reply(raw, ctx) if ctx else decode_reply(raw)


def layers(pkt: Packet) -> list[Packet]:
    out = []
    while not isinstance(pkt, NoPayload):
        out.append(pkt)
        pkt = pkt.payload
    return out


def assert_same_fields(built: Packet, decoded: Packet) -> None:
    """Every field set when building reads back equal from the decoded packet, layer by layer."""
    want, got = layers(built), layers(decoded)
    assert [type(x) for x in got] == [type(x) for x in want], (
        [type(x).__name__ for x in got], [type(x).__name__ for x in want])
    for b, d in zip(want, got):
        for fld in b.fields_desc:
            if fld.name not in b.fields:
                continue
            mine, theirs = b.getfieldval(fld.name), d.getfieldval(fld.name)
            if isinstance(fld, (PacketField, PacketListField)):
                as_bytes = (lambda v: b"".join(bytes(x) for x in v)) if isinstance(mine, list) else bytes
                assert as_bytes(theirs) == as_bytes(mine), f"{b.name}.{fld.name}"
            else:
                assert theirs == mine, f"{b.name}.{fld.name}: {theirs!r} != {mine!r}"


def assert_roundtrip(case: Case) -> Packet:
    """Length filled in, decodes without a raw layer, same fields, same bytes back."""
    assert case.pkt.len is None, "the corpus leaves len to post_build"
    raw = case.raw
    assert int.from_bytes(raw[:4], "little") == len(raw)
    decoded = decode(case)
    assert not decoded.haslayer(FuseRaw), decoded[FuseRaw].reason
    assert decoded.len == len(raw)
    assert_same_fields(case.pkt, decoded)
    assert bytes(decoded) == raw
    assert bytes(decode(bytes(decoded), case.kind, case.ctx)) == raw
    rebuilt = decoded.copy()
    rebuilt.clear_cache()  # built again from the decoded fields, not from Scapy's byte cache
    assert bytes(rebuilt) == raw
    return decoded
