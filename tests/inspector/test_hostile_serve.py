"""`fusetrace serve` runs mount(2) as root from what a trace says: a crafted trace must not
get a bind, move or remount, a set-uid file or a device node, nor a 4 GiB read buffer."""

from __future__ import annotations

from pathlib import Path

import pytest

from dissectors import decode_reply
from dissectors.constants import Opcode
from dissectors.context import DEFAULT_CONTEXT
from dissectors.structs import FuseInHeader, FuseInitIn, FuseInitOut, FuseOutHeader
from inspector import syscalls
from inspector.serve import ReplyBook, Responder
from inspector.features import max_pages_limit
from inspector.serve.session import SERVABLE_FLAGS, buffer_size, mount_options
from traces import TraceWriter

MS_BIND, MS_MOVE, MS_REMOUNT, MS_REC = 0x1000, 0x2000, 0x20, 0x4000
MS_SHARED, MS_PRIVATE, MS_SLAVE, MS_UNBINDABLE = 1 << 20, 1 << 18, 1 << 19, 1 << 17
_OFFERED = 0x5FD73FFFFFB


@pytest.mark.parametrize("flag", [MS_BIND, MS_MOVE, MS_REMOUNT, MS_REC, MS_SHARED, MS_PRIVATE,
                                  MS_SLAVE, MS_UNBINDABLE, 1 << 31])
def test_recorded_flags_a_fuse_mount_cannot_carry_are_dropped(flag: int) -> None:
    opts = mount_options({"mount": {"flags": flag | syscalls.MS_RDONLY | syscalls.MS_NOATIME}})
    assert opts.flags == (syscalls.MS_RDONLY | syscalls.MS_NOATIME | syscalls.MS_NOSUID
                          | syscalls.MS_NODEV)


@pytest.mark.parametrize("header", [
    {"mount": {"flags": 0}},
    {"options": ["suid", "dev"]},
    {"options": ["suid"], "mount": {"flags": syscalls.MS_RDONLY}},
])
def test_a_served_mount_is_always_nosuid_and_nodev(header: dict[str, object]) -> None:
    flags = mount_options(header).flags
    assert flags & syscalls.MS_NOSUID and flags & syscalls.MS_NODEV
    assert not flags & ~SERVABLE_FLAGS


def test_the_mount_as_made_wins_over_the_header() -> None:
    """A server that mounted by itself (AUTO as root) left its options only in the `mount`
    event; the header's guess must not drop them (a served memfs without
    default_permissions gets ACCESS requests it never recorded)."""
    mount = {"flags": syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_RDONLY | MS_BIND,
             "data": "fd=6,default_permissions,rootmode=40000,user_id=0,group_id=0,"
                     "max_read=65536,allow_other"}
    opts = mount_options({"options": [], "mount": {"flags": 0}}, mount)
    assert opts.default_permissions and opts.allow_other and opts.max_read == 65536
    assert opts.flags & syscalls.MS_RDONLY and not opts.flags & MS_BIND


def test_a_mount_through_fusermount_falls_back_to_the_header() -> None:
    mount = {"flags": 0, "data": "via fusermount3 -o rw,default_permissions"}
    opts = mount_options({"options": ["allow_other"], "mount": {"flags": syscalls.MS_RDONLY}},
                         mount)
    assert opts.allow_other and not opts.default_permissions
    assert opts.flags & syscalls.MS_RDONLY


def _trace(path: Path, max_write: int, max_pages: int) -> Path:
    init = FuseInHeader(opcode=Opcode.INIT, unique=1) / FuseInitIn(major=7, minor=45)
    with TraceWriter(path, {"source": "test"}) as w:
        w.request(bytes(init))
        w.reply(bytes(FuseOutHeader(unique=1) / FuseInitOut(major=7, minor=45,
                                                             max_write=max_write,
                                                             max_pages=max_pages)))
    return path


def test_a_huge_recorded_max_write_is_clamped_to_the_kernels_limit(tmp_path: Path) -> None:
    res = Responder(ReplyBook.load(_trace(tmp_path / "t.fzt", (1 << 32) - 1, 0xFFFF)))
    served = res.respond(bytes(FuseInHeader(opcode=Opcode.INIT, unique=5)
                               / FuseInitIn(major=7, minor=45, flags=_OFFERED & 0xFFFFFFFF,
                                            flags2=_OFFERED >> 32)))
    assert served is not None
    init = decode_reply(served, DEFAULT_CONTEXT.for_reply(Opcode.INIT))[FuseInitOut]
    pages = max_pages_limit()
    assert (init.max_write, init.max_pages) == (pages * 4096, pages)
    assert buffer_size(res.max_write) == pages * 4096 + 8192 <= (256 << 20) + 8192


def test_a_smaller_recorded_max_write_is_kept(tmp_path: Path) -> None:
    res = Responder(ReplyBook.load(_trace(tmp_path / "t.fzt", 1 << 17, 32)))
    served = res.respond(bytes(FuseInHeader(opcode=Opcode.INIT, unique=5)
                               / FuseInitIn(major=7, minor=45)))
    assert served is not None
    init = decode_reply(served, DEFAULT_CONTEXT.for_reply(Opcode.INIT))[FuseInitOut]
    assert (init.max_write, init.max_pages) == (1 << 17, 32)


def test_the_old_mount_magic_is_dropped_as_the_kernel_does() -> None:
    assert mount_options({"mount": {"flags": 0xC0ED0000 | syscalls.MS_RDONLY}}).flags == (
        syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV)
