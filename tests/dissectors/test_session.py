"""`SessionDecoder`: pairing replies with requests, INIT negotiation, passthrough dialects."""

from __future__ import annotations

import struct

from dissector_corpus import KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, init_out, rep, req
from dissectors import (
    Dialect,
    FuseBackingMap,
    FusePassthroughOut,
    FuseRaw,
    Opcode,
    SessionDecoder,
)
from dissectors.constants import (
    FOPEN_PASSTHROUGH,
    FUSE_INIT_EXT,
    FUSE_PASSTHROUGH,
    FUSE_PASSTHROUGH_ANDROID,
    FUSE_PASSTHROUGH_ANDROID_EXT,
    FUSE_SETXATTR_EXT,
)
from dissectors.structs import (
    FuseEntryOutCompat,
    FuseForgetIn,
    FuseGetxattrIn,
    FuseGetxattrOut,
    FuseData,
    FuseInitInCompat,
    FuseInitIn,
    FuseInitOutCompat22,
    FuseName,
    FuseOpenIn,
    FuseOpenOut,
    FuseOpenOutAndroid,
    FuseSetxattrIn,
    FuseSetxattrInCompat,
    FuseWriteIn,
    FuseWriteOut,
)

O = Opcode
BACKING_OPEN = 0x4010E501


def init(dec: SessionDecoder, kernel_minor: int, kernel_flags: int, kernel_flags2: int,
         server_minor: int, server_flags: int, server_flags2: int = 0):
    """Feed an INIT exchange (the right fuse_init_in size for the kernel's minor)."""
    if kernel_minor >= 36:
        body = FuseInitIn(minor=kernel_minor, flags=kernel_flags, flags2=kernel_flags2)
    else:
        body = FuseInitInCompat(minor=kernel_minor, flags=kernel_flags)
    dec.feed_request(bytes(req(O.INIT, 1, 0) / body))
    return dec.feed_reply(bytes(rep(1) / init_out(minor=server_minor, flags=server_flags,
                                                  flags2=server_flags2)))


def open_exchange(dec: SessionDecoder, unique: int, body):
    dec.feed_request(bytes(req(O.OPEN, unique, 2) / FuseOpenIn(flags=2)))
    return dec.feed_reply(bytes(rep(unique) / body))


def test_mainline_passthrough() -> None:
    dec = SessionDecoder()
    assert dec.ctx.dialect is Dialect.NONE and not dec.ctx.minor_known
    init(dec, 45, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 45, FUSE_INIT_EXT | 1, FUSE_PASSTHROUGH >> 32)
    assert dec.ctx.minor_known and dec.ctx.minor == 45
    assert dec.ctx.dialect is Dialect.MAINLINE
    assert dec.ctx.flags == FUSE_INIT_EXT | 1 | FUSE_PASSTHROUGH
    msg = open_exchange(dec, 2, FuseOpenOut(fh=3, open_flags=FOPEN_PASSTHROUGH, backing_id=1))
    assert msg.brief.get("backing_id") == 1 and msg.brief.get("passthrough_fh") is None
    assert msg.text == "OPEN unique=2 fh=0x3 open_flags=PASSTHROUGH backing_id=1"
    pkt = msg.packet()
    assert isinstance(pkt.payload, FuseOpenOut) and pkt.backing_id == 1
    call = dec.feed_ioctl(BACKING_OPEN, struct.pack("<iIQ", 5, 0, 0), 1)
    assert call.name == "FUSE_DEV_IOC_BACKING_OPEN"
    assert isinstance(call.packet(), FuseBackingMap) and call.fields == {"fd": 5, "flags": 0, "padding": 0}
    assert call.text == "FUSE_DEV_IOC_BACKING_OPEN fd=5 flags=0 padding=0 = 1"


def test_android_minor_31_flags_bit_31() -> None:
    dec = SessionDecoder()
    init(dec, 31, 0x3FFFFFFB | FUSE_PASSTHROUGH_ANDROID, 0, 31, FUSE_PASSTHROUGH_ANDROID | 1)
    assert dec.ctx.dialect is Dialect.ANDROID and dec.ctx.minor == 31
    msg = open_exchange(dec, 2, FuseOpenOutAndroid(fh=3, passthrough_fh=7))
    assert msg.brief.get("passthrough_fh") == 7 and msg.brief.get("backing_id") is None
    assert msg.text == "OPEN unique=2 fh=0x3 open_flags=0 passthrough_fh=7"
    assert isinstance(msg.packet().payload, FuseOpenOutAndroid)
    call = dec.feed_ioctl(BACKING_OPEN, struct.pack("<IIQ", 5, 0, 0), 7)
    assert call.name == "FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0"
    assert isinstance(call.packet(), FusePassthroughOut)
    assert call.text == "FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0 fd=5 len=0 vec=0 = 7"


def test_android_minor_36_flags2_bit_31() -> None:
    dec = SessionDecoder()
    init(dec, 38, KERNEL_INIT_FLAGS, 1 << 31, 38, FUSE_INIT_EXT, 1 << 31)
    assert dec.ctx.flags & FUSE_PASSTHROUGH_ANDROID_EXT
    assert dec.ctx.dialect is Dialect.ANDROID
    msg = open_exchange(dec, 2, FuseOpenOutAndroid(fh=3, passthrough_fh=9))
    assert msg.brief.get("passthrough_fh") == 9
    assert dec.feed_ioctl(BACKING_OPEN, bytes(16), 9).name == "FUSE_DEV_IOC_PASSTHROUGH_OPEN_V0"


def test_android_bit_in_low_word_does_not_count_from_36() -> None:
    """From 7.36 Android moved its bit to flags2; bit 31 of flags is mainline's reserved bit."""
    dec = SessionDecoder()
    init(dec, 38, KERNEL_INIT_FLAGS | FUSE_PASSTHROUGH_ANDROID, 0, 38,
         FUSE_INIT_EXT | FUSE_PASSTHROUGH_ANDROID)
    assert dec.ctx.dialect is Dialect.NONE


def test_flags2_ignored_without_init_ext() -> None:
    dec = SessionDecoder()
    init(dec, 45, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 45, 1, FUSE_PASSTHROUGH >> 32)  # no INIT_EXT
    assert dec.ctx.dialect is Dialect.NONE and not dec.ctx.flags & FUSE_PASSTHROUGH


def test_only_the_intersection_of_flags_counts() -> None:
    # The server accepts PASSTHROUGH and SETXATTR_EXT, the kernel offered neither.
    dec = SessionDecoder()
    init(dec, 45, 0x1 | FUSE_INIT_EXT, 0, 45, FUSE_INIT_EXT | FUSE_SETXATTR_EXT | 1, FUSE_PASSTHROUGH >> 32)
    assert dec.ctx.flags == FUSE_INIT_EXT | 1
    assert dec.ctx.dialect is Dialect.NONE
    msg = dec.feed_request(bytes(req(O.SETXATTR, 2, 2) / FuseSetxattrInCompat(size=1)
                                 / FuseName(name=b"user.a") / FuseData(data=b"x")))
    assert not msg.brief.reason and isinstance(msg.packet().payload, FuseSetxattrInCompat)
    # The kernel offers both, the server accepts neither.
    dec = SessionDecoder()
    init(dec, 45, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 45, FUSE_INIT_EXT | 1)
    assert dec.ctx.flags == FUSE_INIT_EXT | 1 and dec.ctx.dialect is Dialect.NONE
    # Both: SETXATTR requests then carry the 16-byte struct.
    dec = SessionDecoder()
    init(dec, 45, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 45, FUSE_INIT_EXT | FUSE_SETXATTR_EXT)
    msg = dec.feed_request(bytes(req(O.SETXATTR, 2, 2) / FuseSetxattrIn(size=1, setxattr_flags=1)
                                 / FuseName(name=b"user.a") / FuseData(data=b"x")))
    assert isinstance(msg.packet().payload, FuseSetxattrIn) and msg.brief.get("setxattr_flags") == 1


def test_minor_is_min_of_kernel_and_server() -> None:
    dec = SessionDecoder()
    init(dec, 38, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 45, FUSE_INIT_EXT, FUSE_PASSTHROUGH >> 32)
    assert dec.ctx.minor == 38
    assert dec.ctx.dialect is Dialect.NONE  # PASSTHROUGH means nothing below 7.40
    dec = SessionDecoder()
    init(dec, 45, KERNEL_INIT_FLAGS, KERNEL_INIT_FLAGS2, 40, FUSE_INIT_EXT, FUSE_PASSTHROUGH >> 32)
    assert dec.ctx.minor == 40 and dec.ctx.dialect is Dialect.MAINLINE


def test_old_server_minor_changes_layouts() -> None:
    """A 7.8 server gets 120-byte entry_out replies (FUSE_COMPAT_ENTRY_OUT_SIZE)."""
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.INIT, 1, 0) / FuseInitIn(minor=45, flags=KERNEL_INIT_FLAGS)))
    reply = dec.feed_reply(bytes(rep(1) / FuseInitOutCompat22(minor=8, flags=1, max_write=4096)))
    assert not reply.brief.reason and dec.ctx.minor == 8
    dec.feed_request(bytes(req(O.LOOKUP, 2) / FuseName(name=b"a")))
    msg = dec.feed_reply(bytes(rep(2) / FuseEntryOutCompat(nodeid=5)))
    assert not msg.brief.reason and msg.brief.get("nodeid") == 5
    assert isinstance(msg.packet().payload, FuseEntryOutCompat)


def test_failed_init_negotiates_nothing() -> None:
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.INIT, 1, 0) / FuseInitIn(minor=45, flags=KERNEL_INIT_FLAGS)))
    dec.feed_reply(bytes(rep(1, -71)))  # EPROTO
    assert not dec.ctx.minor_known and dec.ctx.dialect is Dialect.NONE


def test_reply_to_unknown_unique() -> None:
    dec = SessionDecoder()
    msg = dec.feed_reply(bytes(rep(99) / FuseWriteOut(size=3)))
    assert "reply to an unknown request" in msg.brief.reason
    pkt = msg.packet()
    assert pkt.haslayer(FuseRaw) and b"reply to an unknown request" in pkt[FuseRaw].reason
    assert bytes(pkt) == msg.raw
    assert msg.text == "? unique=99 [raw: reply to an unknown request: layout depends on its opcode]"


def test_duplicate_reply_is_unknown_the_second_time() -> None:
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.WRITE, 4, 2) / FuseWriteIn(size=1)
                           / FuseData(data=b"x")))
    first = dec.feed_reply(bytes(rep(4) / FuseWriteOut(size=1)))
    again = dec.feed_reply(bytes(rep(4) / FuseWriteOut(size=1)))
    assert first.brief.opcode == O.WRITE and not first.brief.reason
    assert again.brief.opcode is None and "unknown request" in again.brief.reason


def test_reply_to_forget_is_raw() -> None:
    """FORGET gets no reply: a reply with its unique is not paired with it."""
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.FORGET, 6, 2) / FuseForgetIn(nlookup=1)))
    msg = dec.feed_reply(bytes(rep(6) / FuseWriteOut()))
    assert msg.brief.reason and msg.packet().haslayer(FuseRaw)
    # Decoded directly against FORGET, the reason says why.
    from dissectors import FuseContext, decode_reply

    pkt = decode_reply(msg.raw, FuseContext().for_reply(O.FORGET))
    assert pkt[FuseRaw].reason == b"the kernel expects no reply to FORGET"


def test_getxattr_size_zero_and_n() -> None:
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.GETXATTR, 2, 2) / FuseGetxattrIn(size=0) / FuseName(name=b"user.a")))
    dec.feed_request(bytes(req(O.GETXATTR, 4, 2) / FuseGetxattrIn(size=64) / FuseName(name=b"user.a")))
    probe = dec.feed_reply(bytes(rep(2) / FuseGetxattrOut(size=5)))
    value = dec.feed_reply(bytes(rep(4) / FuseData(data=b"hello")))
    assert isinstance(probe.packet().payload, FuseGetxattrOut) and probe.brief.get("size") == 5
    assert isinstance(value.packet().payload, FuseData) and value.brief.get("data_len") == 5
    assert probe.text == "GETXATTR unique=2 size=5"
    assert value.text == "GETXATTR unique=4 data_len=5"


def test_notifications_pass_through_the_session() -> None:
    dec = SessionDecoder()
    msg = dec.feed_reply(struct.pack("<IiQ", 16, 7, 0))  # NOTIFY_RESEND
    assert msg.brief.direction == "notify" and msg.text == "NOTIFY_RESEND" and not msg.brief.reason


def test_replies_out_of_order() -> None:
    dec = SessionDecoder()
    dec.feed_request(bytes(req(O.OPEN, 2, 2) / FuseOpenIn()))
    dec.feed_request(bytes(req(O.LOOKUP, 4) / FuseName(name=b"a")))
    second = dec.feed_reply(bytes(rep(4, -2)))
    first = dec.feed_reply(bytes(rep(2) / FuseOpenOut(fh=1)))
    assert second.text == "LOOKUP unique=4 error=-2 (ENOENT)"
    assert first.brief.opcode == O.OPEN and first.brief.get("fh") == 1


def test_expect_decodes_a_reply_to_a_request_the_decoder_never_saw() -> None:
    """`fusetrace show -r A:B` starts mid-trace: the index knows each reply's opcode."""
    from dissectors.structs import FuseInHeader, FuseOutHeader

    reply = bytes(FuseOutHeader(unique=8) / FuseOpenOut(fh=5))
    dec = SessionDecoder()
    assert "fh=" not in dec.feed_reply(reply).text  # no opcode: left raw
    dec.expect(8, Opcode.OPEN)
    assert dec.feed_reply(reply).text == "OPEN unique=8 fh=0x5 open_flags=0 backing_id=0"
    fed = SessionDecoder()
    fed.feed_request(bytes(FuseInHeader(opcode=Opcode.OPENDIR, unique=8) / FuseOpenIn()))
    fed.expect(8, Opcode.OPEN)  # the request it was fed wins
    assert fed.feed_reply(reply).text.startswith("OPENDIR unique=8")
