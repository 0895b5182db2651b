"""Bad input never raises, and a body that does not fit its layout is shown raw with a reason.

Every entry point is fed random bytes, every corpus message cut at every offset, and
corpus messages with random bytes flipped: `decode_request`, `decode_reply` (every reply
context), `brief_request`, `brief_reply`, `line`, `SessionDecoder.feed_*`,
`dissect_ioctl_arg` (every ioctl number, every dialect), and on each packet `summary()`,
`show(dump=True)`, `bytes()` and a rebuild from the fields.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.packet import NoPayload, Packet

from dissector_checks import layers
from dissector_corpus import CTX, Case, all_cases
from dissectors import (
    DevIoctl,
    Dialect,
    FuseContext,
    FuseRaw,
    NotifyCode,
    Opcode,
    SessionDecoder,
    brief_reply,
    brief_request,
    decode_reply,
    decode_request,
    dissect_ioctl_arg,
    line,
)
from dissectors.layouts import REPLIES, notify_plan, reply_plan, request_plan, struct_size
from dissectors.structs import FuseStruct

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CASES = all_cases()

REQUEST_CONTEXTS = [
    CTX,
    FuseContext(),
    FuseContext(minor=8, minor_known=True),
    FuseContext(minor=11, minor_known=True),
    FuseContext(minor=31, flags=1 << 31, dialect=Dialect.ANDROID, minor_known=True),
]
REPLY_CONTEXTS = [CTX.for_reply(None), CTX.for_reply(Opcode.FORGET), CTX.for_reply(999)]
for _op in REPLIES:
    for _ctx in (CTX, FuseContext(minor=8, minor_known=True), REQUEST_CONTEXTS[-1]):
        REPLY_CONTEXTS.append(_ctx.for_reply(_op, {"size": 0}))
        if _op in (Opcode.GETXATTR, Opcode.LISTXATTR):
            REPLY_CONTEXTS.append(_ctx.for_reply(_op, {"size": 64}))
IOCTLS = [*DevIoctl, 0x5401]


def nested(pkt: Packet) -> list[Packet]:
    """Every packet in the tree: payload chain, packet fields, list items."""
    out, todo = [], [pkt]
    while todo:
        p = todo.pop()
        if isinstance(p, NoPayload) or not isinstance(p, Packet):
            continue
        out.append(p)
        todo.append(p.payload)
        for fld in p.fields_desc:
            value = p.getfieldval(fld.name)
            todo.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, Packet))
    return out


def use(pkt: Packet, raw: bytes) -> None:
    """Everything a user does with a packet; checks what must hold of any decode."""
    pkt.summary()
    pkt.show(dump=True)
    repr(pkt)
    assert bytes(pkt) == raw  # the cached dissection
    rebuilt = pkt.copy()
    rebuilt.clear_cache()
    assert bytes(rebuilt) == raw  # built from the decoded fields: nothing invented or lost
    for p in nested(pkt):
        if isinstance(p, FuseRaw):
            assert p.reason, "a raw layer always says why"
        # Scapy's own Raw would be bytes nobody explained (Padding past `len` is fine).
        assert type(p) is not conf.raw_layer, pkt.show(dump=True)


def feed_everything(raw: bytes, request_ctxs=REQUEST_CONTEXTS, reply_ctxs=REPLY_CONTEXTS) -> None:
    for ctx in request_ctxs:
        use(decode_request(raw, ctx), raw)
        line(brief_request(raw, ctx))
    for ctx in reply_ctxs:
        use(decode_reply(raw, ctx), raw)
        line(brief_reply(raw, ctx))
    dec = SessionDecoder()
    for msg in (dec.feed_request(raw), dec.feed_reply(raw), dec.feed_request(raw), dec.feed_reply(raw)):
        assert isinstance(msg.text, str)
        msg.packet().summary()
    for cmd in IOCTLS:
        # Only BACKING_OPEN (== Android V0) reads differently per dialect.
        for dialect in Dialect if cmd == DevIoctl.BACKING_OPEN else [Dialect.NONE]:
            for size in (4, 16, len(raw)):  # the right size for some ioctls, wrong for others
                data = raw[:size]
                arg = dissect_ioctl_arg(cmd, data, dialect)
                arg.summary()
                arg.show(dump=True)
                assert bytes(arg) == data
                call = SessionDecoder(ctx=FuseContext(dialect=dialect)).feed_ioctl(cmd, data, -1, 22)
                assert call.text and call.name


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes(raw: bytes) -> None:
    feed_everything(raw, REQUEST_CONTEXTS[:2], REPLY_CONTEXTS[::7])


@FUZZ
@given(st.binary(max_size=64), st.sampled_from(REQUEST_CONTEXTS), st.sampled_from(REPLY_CONTEXTS))
def test_random_bytes_every_context(raw: bytes, req_ctx: FuseContext, rep_ctx: FuseContext) -> None:
    feed_everything(raw, [req_ctx], [rep_ctx])


@FUZZ
@given(st.sampled_from([*Opcode, 0, 7, 999]), st.binary(max_size=300), st.integers(0, 3),
       st.sampled_from(REQUEST_CONTEXTS))
def test_random_request_bodies(opcode: int, body: bytes, extlen: int, ctx: FuseContext) -> None:
    """A valid header makes the body reach the struct parsers."""
    raw = struct.pack("<IIQQIIIHH", 40 + len(body), opcode, 5, 1, 0, 0, 0, extlen, 0) + body
    pkt = decode_request(raw, ctx)
    use(pkt, raw)
    brief = brief_request(raw, ctx)
    line(brief)
    plan, reason = request_plan(ctx, opcode, extlen, body)
    if reason:  # the planner's reason, word for word, in both decoders
        assert pkt[FuseRaw].reason == reason.encode() and brief.reason == reason


@FUZZ
@given(st.sampled_from(REPLY_CONTEXTS), st.binary(max_size=400), st.sampled_from([0, 0, 0, -2]))
def test_random_reply_bodies(ctx: FuseContext, body: bytes, error: int) -> None:
    raw = struct.pack("<IiQ", 16 + len(body), error, 5) + body
    pkt = decode_reply(raw, ctx)
    use(pkt, raw)
    brief = brief_reply(raw, ctx)
    line(brief)
    plan, reason = reply_plan(ctx, error, body)
    if reason:
        assert pkt[FuseRaw].reason == reason.encode() and brief.reason == reason


@FUZZ
@given(st.sampled_from([*NotifyCode, 0, 42]), st.binary(max_size=200))
def test_random_notification_bodies(code: int, body: bytes) -> None:
    raw = struct.pack("<IiQ", 16 + len(body), code, 0) + body
    pkt = decode_reply(raw)
    use(pkt, raw)
    line(brief_reply(raw))
    reason = notify_plan(code, body)[1]
    if reason:
        assert pkt[FuseRaw].reason == reason.encode() and brief_reply(raw).reason == reason


def fixed_size(plan: list[Any]) -> int | None:
    """The body size of a plan made only of fixed structs, else None."""
    if not all(isinstance(e, type) and issubclass(e, FuseStruct) for e in plan):
        return None
    return sum(struct_size(e) for e in plan)


@FUZZ
@given(st.sampled_from([c for c in CASES if c.kind != "request"] + [c for c in CASES if c.kind == "request"]),
       st.integers(-64, 64))
def test_short_and_oversized_fixed_bodies_are_raw(case: Case, delta: int) -> None:
    """A fixed-layout body of the wrong size is a raw layer with a reason, in both decoders."""
    raw = case.raw
    head = 40 if case.kind == "request" else 16
    body = raw[head:]
    if case.kind == "request":
        plan, _ = request_plan(case.ctx, case.pkt.opcode, 0, body)
    elif case.kind == "reply":
        plan, _ = reply_plan(case.ctx, case.pkt.error, body)
    else:
        plan, _ = notify_plan(case.pkt.error, body)
    size = fixed_size(plan)
    if size is None or delta == 0 or len(body) + delta < 0:
        return
    body = body + bytes(range(delta)) if delta > 0 else body[:delta]
    if case.kind != "notify" and (case.pkt.opcode if case.kind == "request" else case.ctx.opcode) == Opcode.INIT:
        # INIT is read by length: each side sends the size of its own minor.
        if len(body) in ({16, 64} if case.kind == "request" else {8, 24, 64}):
            return
    raw = (head + len(body)).to_bytes(4, "little") + raw[4:head] + body
    if case.kind == "request":
        pkt, brief = decode_request(raw, case.ctx), brief_request(raw, case.ctx)
    else:
        pkt, brief = decode_reply(raw, case.ctx), brief_reply(raw, case.ctx)
    use(pkt, raw)
    if body:
        assert pkt.haslayer(FuseRaw) and pkt[FuseRaw].reason
    assert brief.reason and "[raw: " in line(brief)


def is_init_compat_size(case: Case, body_len: int) -> bool:
    """INIT is read by the bytes present: a cut at an older minor's size reads as that minor.

    (The declared `len` would tell a cut 64-byte fuse_init_in from a 16-byte one; the
    planners only see the bytes present. Known limitation, see the report.)
    """
    if case.kind == "request":
        return case.pkt.opcode == Opcode.INIT and body_len in (16, 64)
    return case.kind == "reply" and case.ctx.opcode == Opcode.INIT and body_len in (8, 24, 64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_truncation(case: Case) -> None:
    """The capture cut at every offset (the header's `len` still says the full size)."""
    full = case.raw
    head = 40 if case.kind == "request" else 16
    whole = decode_request(full, case.ctx) if case.kind == "request" else decode_reply(full, case.ctx)
    fixed = sum(struct_size(type(x)) for x in layers(whole)[1:] if isinstance(x, FuseStruct))
    for cut in range(len(full)):
        raw = full[:cut]
        if case.kind == "request":
            pkt, brief = decode_request(raw, case.ctx), brief_request(raw, case.ctx)
        else:
            pkt, brief = decode_reply(raw, case.ctx), brief_reply(raw, case.ctx)
        use(pkt, raw)
        text = line(brief)
        rebuilt = pkt.copy()
        rebuilt.clear_cache()
        # Nothing is invented: rebuilt from its fields the packet is the bytes it was given
        # (a header cut short is a raw layer of those bytes).
        assert bytes(rebuilt) == raw, (cut, pkt.show(dump=True))
        if cut < head:
            assert isinstance(pkt, FuseRaw) and pkt.reason and brief.reason
        elif cut < head + fixed and not is_init_compat_size(case, cut - head):
            assert pkt.haslayer(FuseRaw) and pkt[FuseRaw].reason, (cut, pkt.show(dump=True))
            assert brief.reason and "[raw: " in text


@FUZZ
@given(st.sampled_from(CASES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                        min_size=1, max_size=4))
def test_byte_flips(case: Case, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(case.raw)
    for where, xor in flips:
        raw[where % len(raw)] ^= xor
    raw = bytes(raw)
    feed_everything(raw, [case.ctx] if case.kind == "request" else [],
                    [case.ctx] if case.kind != "request" else [])
