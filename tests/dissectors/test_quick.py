"""The struct-only fast path (`quick.py`) agrees with the Scapy decoder on every corpus message."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.packet import Packet

from dissector_checks import decode, layers
from dissector_corpus import Case, all_cases
from dissectors import SessionDecoder, brief_reply, brief_request
from dissectors.session import _Pending
from dissectors.quick import Brief, compiled, peek_reply, peek_request
from dissectors.structs import (
    FuseData,
    FuseDirentList,
    FuseDirentplusList,
    FuseHeader,
    FuseName,
    FuseNames,
    FuseStruct,
)

CASES = all_cases()


def brief_of(case: Case) -> Brief:
    return brief_request(case.raw, case.ctx) if case.kind == "request" else brief_reply(case.raw, case.ctx)


def scapy_value(layer: Packet, dotted: str) -> Any:
    value: Any = layer
    for part in dotted.split("."):
        value = value.getfieldval(part)
    return value


def normal(value: Any) -> Any:
    return value if isinstance(value, (bytes, str)) else int(value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_brief_layers_equal_scapy_fields(case: Case) -> None:
    brief, decoded = brief_of(case), decode(case)
    assert not brief.reason
    structs = [x for x in layers(decoded) if isinstance(x, FuseStruct) and not isinstance(x, FuseHeader)]
    assert [comp.cls for comp, _ in brief.layers] == [type(x) for x in structs]
    for (comp, values), layer in zip(brief.layers, structs):
        assert len(comp.names) == len(values)
        for name, value in zip(comp.names, values):
            assert normal(scapy_value(layer, name)) == value, f"{comp.cls.__name__}.{name}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_brief_extras_equal_scapy(case: Case) -> None:
    brief, decoded = brief_of(case), decode(case)
    expected: dict[str, Any] = {}
    if decoded.haslayer(FuseName):
        expected["name"] = decoded[FuseName].getfieldval("name")
    if decoded.haslayer(FuseNames):
        expected["name"] = decoded[FuseNames].getfieldval("name")
        expected["name2"] = decoded[FuseNames].name2
    if decoded.haslayer(FuseData):
        expected["data_len"] = len(decoded[FuseData].data)
    if decoded.haslayer(FuseDirentList):
        expected["entries"] = len(decoded[FuseDirentList].dirents)
    if decoded.haslayer(FuseDirentplusList):
        expected["entries"] = len(decoded[FuseDirentplusList].direntplus)
    assert brief.extras == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_brief_header(case: Case) -> None:
    brief, decoded = brief_of(case), decode(case)
    assert (brief.length, brief.unique) == (decoded.len, decoded.unique)
    if case.kind == "request":
        assert (brief.opcode, brief.nodeid, brief.pid) == (decoded.opcode, decoded.nodeid, decoded.pid)
        assert peek_request(case.raw) == (decoded.opcode, decoded.unique, decoded.nodeid)
    else:
        assert brief.error == decoded.error and brief.opcode == case.ctx.opcode
        assert peek_reply(case.raw) == (decoded.error, decoded.unique)


def test_brief_get_finds_nested_and_extras() -> None:
    case = next(c for c in CASES if c.id == "reply-CREATE")
    brief = brief_of(case)
    assert brief.get("attr.mode") == 0o100644 and brief.get("fh") == 5
    assert brief.text("attr.mode") == "S_IFREG|0644" and brief.text("fh") == "0x5"
    assert brief.get("missing", "dflt") == "dflt" and brief.text("missing") is None


def test_compiled_is_cached_and_exact() -> None:
    from dissectors.structs import FuseEntryOut, FuseInitOut

    assert compiled(FuseEntryOut) is compiled(FuseEntryOut)
    assert compiled(FuseEntryOut).st.size == 128 and compiled(FuseInitOut).st.size == 64
    assert compiled(FuseEntryOut).names[-1] == "attr.flags"


def _decoders(case: Case) -> tuple[SessionDecoder, SessionDecoder]:
    """Two decoders in the case's connection state, a reply's request already pending."""
    pair = []
    for _ in range(2):
        dec = SessionDecoder(ctx=replace(case.ctx, opcode=None, request=None))
        if case.kind == "reply" and case.ctx.opcode is not None:
            unique = int.from_bytes(case.raw[8:16], "little")
            dec.pending[unique] = _Pending(case.ctx.opcode, case.ctx.request)
        pair.append(dec)
    return pair[0], pair[1]


def _texts(case: Case, raw: bytes) -> tuple[str, str]:
    slow, fast = _decoders(case)
    if case.kind == "request":
        return slow.feed_request(raw).text, fast.request_text(raw)
    return slow.feed_reply(raw).text, fast.reply_text(raw)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_line_from_bytes_equals_line_from_brief(case: Case) -> None:
    """The list hot path (`compile_line`) prints exactly what the Brief path prints."""
    slow, fast = _texts(case, case.raw)
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.integers(0, 400), st.binary(max_size=8))
def test_line_paths_agree_on_damaged_messages(case: Case, cut: int, junk: bytes) -> None:
    raw = case.raw[:cut] + junk
    slow, fast = _texts(case, raw)
    assert fast == slow
