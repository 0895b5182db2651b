"""One-line summaries and `show()` read like strace: names for flags, modes, errnos."""

from __future__ import annotations

import os
import stat

import pytest

from dissector_corpus import CTX, all_cases, rep, req
from dissectors import FuseContext, Opcode, brief_reply, brief_request, decode_reply, decode_request, line
from dissectors.constants import FOPEN_PARALLEL_DIRECT_WRITES, FOPEN_PASSTHROUGH
from dissectors.fields import errno_name, flags_repr, mode_repr, open_flags_repr
from dissectors.structs import FuseCreateIn, FuseMkdirIn, FuseName, FuseOpenIn, FuseOpenOut

O = Opcode


def reply_text(pkt, opcode: int) -> str:
    return decode_reply(bytes(pkt), CTX.for_reply(opcode)).summary()


def test_open_reply_line() -> None:
    pkt = rep(13) / FuseOpenOut(fh=3, open_flags=FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_PASSTHROUGH, backing_id=1)
    expected = "OPEN unique=13 fh=0x3 open_flags=PARALLEL_DIRECT_WRITES|PASSTHROUGH backing_id=1"
    assert reply_text(pkt, O.OPEN) == expected
    assert line(brief_reply(bytes(pkt), CTX.for_reply(O.OPEN))) == expected


def test_create_request_line() -> None:
    pkt = req(O.CREATE, 35) / FuseCreateIn(flags=os.O_RDWR | os.O_CREAT, mode=stat.S_IFREG | 0o644,
                                           umask=0o022) / FuseName(name=b"new.txt")
    assert decode_request(bytes(pkt), CTX).summary() == \
        "CREATE unique=35 nodeid=1 name='new.txt' flags=O_RDWR|O_CREAT mode=S_IFREG|0644"


def test_error_line() -> None:
    assert reply_text(rep(2, -2), O.LOOKUP) == "LOOKUP unique=2 error=-2 (ENOENT)"
    assert reply_text(rep(2, -38), O.LOOKUP) == "LOOKUP unique=2 error=-38 (ENOSYS)"


def test_mkdir_line() -> None:
    pkt = req(O.MKDIR, 9) / FuseMkdirIn(mode=0o755, umask=0o022) / FuseName(name=b"dir")
    assert decode_request(bytes(pkt), CTX).summary() == "MKDIR unique=9 nodeid=1 name='dir' mode=0755"


def test_raw_note_in_line() -> None:
    text = decode_request(bytes(req(O.OPEN, 14, 2))[:40] + b"\x01\x02", FuseContext()).summary()
    assert text.startswith("OPEN unique=14 nodeid=2 [raw: short OPEN request")


@pytest.mark.parametrize("mode, text", [
    (stat.S_IFREG | 0o644, "S_IFREG|0644"),
    (stat.S_IFDIR | 0o755, "S_IFDIR|0755"),
    (stat.S_IFLNK | 0o777, "S_IFLNK|0777"),
    (stat.S_IFREG | stat.S_ISUID | 0o755, "S_IFREG|4755"),
    (0o644, "0644"),
])
def test_modes(mode: int, text: str) -> None:
    assert mode_repr(mode) == text


def test_open_flags() -> None:
    assert open_flags_repr(os.O_RDWR | os.O_CREAT) == "O_RDWR|O_CREAT"
    assert open_flags_repr(os.O_RDONLY) == "O_RDONLY"
    assert open_flags_repr(os.O_WRONLY | os.O_TRUNC | os.O_APPEND) == "O_WRONLY|O_TRUNC|O_APPEND"
    assert open_flags_repr(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC).endswith("O_DIRECTORY|O_CLOEXEC")


@pytest.mark.skipif(os.O_DIRECTORY != 0o200000, reason="asm-generic open flag values only")
def test_kernel_o_largefile_is_named() -> None:
    """The kernel adds O_LARGEFILE (0100000 on x86-64) to every FUSE open; glibc calls it 0."""
    assert open_flags_repr(0o100002) == "O_RDWR|O_LARGEFILE"
    assert open_flags_repr(0o100102) == "O_RDWR|O_CREAT|O_LARGEFILE"
    text = decode_request(bytes(req(O.OPEN, 14, 2) / FuseOpenIn(flags=0o100002)), CTX).summary()
    assert text == "OPEN unique=14 nodeid=2 flags=O_RDWR|O_LARGEFILE"


def test_errno_names() -> None:
    assert errno_name(-2) == "ENOENT" and errno_name(0) == "OK" and errno_name(-4242) == "4242"


def test_flags_repr_unknown_bits_in_hex() -> None:
    assert flags_repr(0b101 | 1 << 20, {1: "A", 4: "C"}) == "A|C|0x100000" and flags_repr(0, {1: "A"}) == "0"


def test_show_uses_the_same_names() -> None:
    pkt = decode_reply(bytes(rep(13) / FuseOpenOut(fh=3, open_flags=FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_PASSTHROUGH,
                                                   backing_id=1)), CTX.for_reply(O.OPEN))
    shown = pkt.show(dump=True)
    assert "open_flags= PARALLEL_DIRECT_WRITES|PASSTHROUGH" in shown
    assert "backing_id= 1" in shown and "fh        = 0x3" in shown
    create = decode_request(bytes(req(O.CREATE, 35) / FuseCreateIn(flags=os.O_RDWR | os.O_CREAT,
                                                                   mode=stat.S_IFREG | 0o644)
                                  / FuseName(name=b"x")), CTX).show(dump=True)
    assert "flags     = O_RDWR|O_CREAT" in create and "mode      = S_IFREG|0644" in create
    assert "name      = 'x'" in create
    err = decode_reply(bytes(rep(2, -2)), CTX.for_reply(O.LOOKUP)).show(dump=True)
    assert "error     = -2 (ENOENT)" in err


def test_every_corpus_message_has_a_clean_line() -> None:
    for case in all_cases():
        b = brief_request(case.raw, case.ctx) if case.kind == "request" else brief_reply(case.raw, case.ctx)
        text = line(b)
        assert "[raw" not in text and "None" not in text, (case.id, text)
        decoded = decode_request(case.raw, case.ctx) if case.kind == "request" else decode_reply(case.raw, case.ctx)
        assert decoded.summary() == text
