"""Notifications (server → kernel, `unique` 0, `error` = notify code): every code of
`layouts.NOTIFICATIONS` round-trips; INVAL_ENTRY and PRUNE byte for byte.
"""

from __future__ import annotations

import struct

import pytest

from dissector_checks import assert_roundtrip, assert_same_fields
from dissector_corpus import Case, notify_cases
from dissectors import FuseOutHeader, FuseRaw, NotifyCode, brief_reply, decode_reply, line
from dissectors.layouts import NOTIFICATIONS
from dissectors.structs import (
    FuseData,
    FuseName,
    FuseNodeidList,
    FuseNotifyDeleteOut,
    FuseNotifyInvalEntryOut,
    FuseNotifyPruneOut,
    FuseNotifyStoreOut,
)

OUT = struct.Struct("<IiQ")
CASES = notify_cases()


def test_every_notification_has_a_case() -> None:
    assert {c.pkt.error for c in CASES} == set(NOTIFICATIONS) == set(NotifyCode)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_roundtrip(case: Case) -> None:
    decoded = assert_roundtrip(case)
    assert decoded.unique == 0 and decoded.error == case.pkt.error
    if decoded.haslayer(FuseName):  # INVAL_ENTRY, DELETE: namelen counts the name, not its NUL
        assert decoded.namelen == len(decoded[FuseName].getfieldval("name"))


def check(pkt, expected: bytes) -> None:
    assert bytes(pkt) == expected
    decoded = decode_reply(expected)  # notifications need no request context
    assert not decoded.haslayer(FuseRaw), decoded[FuseRaw].reason
    assert_same_fields(pkt, decoded)
    assert bytes(decoded) == expected


def test_inval_entry_bytes() -> None:
    name = b"hello.txt"
    body = struct.pack("<QII", 1, len(name), 1) + name + b"\0"  # FUSE_EXPIRE_ONLY
    pkt = FuseOutHeader(error=NotifyCode.INVAL_ENTRY) / FuseNotifyInvalEntryOut(parent=1, flags=1) \
        / FuseName(name=name)
    assert pkt[FuseNotifyInvalEntryOut].namelen is None  # filled from the name
    check(pkt, OUT.pack(16 + len(body), 3, 0) + body)
    decoded = decode_reply(bytes(pkt))
    # `parent` is also a Scapy slot: read the C member with getfieldval.
    assert decoded[FuseNotifyInvalEntryOut].getfieldval("parent") == 1
    assert decoded.namelen == 9 and decoded[FuseName].getfieldval("name") == name


def test_delete_bytes() -> None:
    body = struct.pack("<QQII", 1, 2, 3, 0) + b"old\0"
    pkt = FuseOutHeader(error=NotifyCode.DELETE) / FuseNotifyDeleteOut(parent=1, child=2) \
        / FuseName(name=b"old")
    check(pkt, OUT.pack(16 + len(body), 6, 0) + body)


def test_prune_bytes() -> None:
    body = struct.pack("<IIQ", 3, 0, 0) + struct.pack("<QQQ", 2, 3, 5)
    pkt = FuseOutHeader(error=NotifyCode.PRUNE) / FuseNotifyPruneOut() / FuseNodeidList(nodeids=[2, 3, 5])
    assert pkt[FuseNotifyPruneOut].count is None  # filled from the list
    check(pkt, OUT.pack(16 + len(body), 9, 0) + body)
    decoded = decode_reply(bytes(pkt))
    assert decoded.count == 3 and decoded.nodeids == [2, 3, 5]
    assert line(brief_reply(bytes(pkt))) == "NOTIFY_PRUNE count=3"


def test_store_size_filled_from_data() -> None:
    body = struct.pack("<QQII", 2, 4096, 5, 0) + b"hello"
    pkt = FuseOutHeader(error=NotifyCode.STORE) / FuseNotifyStoreOut(nodeid=2, offset=4096) \
        / FuseData(data=b"hello")
    check(pkt, OUT.pack(16 + len(body), 4, 0) + body)


def test_prune_count_beyond_body_is_flagged() -> None:
    """A count larger than the ids present must not be papered over."""
    raw = OUT.pack(16 + 16 + 8, 9, 0) + struct.pack("<IIQ", 3, 0, 0) + struct.pack("<Q", 2)
    decoded = decode_reply(raw)
    assert bytes(decoded) == raw
    ids = decoded[FuseNodeidList].nodeids if decoded.haslayer(FuseNodeidList) else []
    assert decoded.haslayer(FuseRaw) or len(ids) != 3


def test_unknown_notify_code_is_raw() -> None:
    raw = OUT.pack(24, 42, 0) + bytes(8)
    decoded = decode_reply(raw)
    assert decoded[FuseRaw].reason in (b"unknown notify code 42", "unknown notify code 42")
    assert bytes(decoded) == raw
