"""`fusetrace replay`'s parts that need no mount: bad traces and command lines (exit 2,
nothing written), masks, the translation's one-to-one rule, ioctl attribution."""

from __future__ import annotations

import errno
import os
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator

import msgpack
import pytest

from dissectors.constants import FOPEN_PASSTHROUGH, Opcode
from dissectors.ioctls import DevIoctl
from dissectors.structs import (
    FuseEntryOut,
    FuseInHeader,
    FuseInitIn,
    FuseInitOut,
    FuseOpenOut,
    FuseOutHeader,
    FuseReleaseIn,
)
from inspector.replay import End, Outcome, replay
from inspector.replay.attribute import Attributor
from inspector.exchange.trap import TrappedIoctl
from inspector.replay.emulate import EmulatedKernel
from inspector.replay.masks import Mask, Masks
from inspector.replay.translate import Table
from inspector.syscalls import mount, umount2
from record_support import MEMFS, fusetrace
from traces import TraceWriter


def _init_trace(path: Path) -> Path:
    with TraceWriter(path, {"source": "proxy"}) as w:
        w.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn()))
    return path


def _cut(tmp_path: Path) -> Path:
    whole = _init_trace(tmp_path / "whole.fzt").read_bytes()
    cut = tmp_path / "cut.fzt"
    cut.write_bytes(whole[:-7])
    return cut


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.fzt"
    path.write_bytes(b"\x00not a trace at all" * 10)
    return path


def _newer(tmp_path: Path) -> Path:
    path = tmp_path / "newer.fzt"
    path.write_bytes(msgpack.packb({"magic": "fusetrace", "format": 99}))
    return path


def _no_init(tmp_path: Path) -> Path:
    path = tmp_path / "noinit.fzt"
    with TraceWriter(path, {"source": "proxy"}) as w:
        w.request(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=4, nodeid=1)))
    return path


@pytest.mark.parametrize("make, words", [
    (_cut, "incomplete record"), (_garbage, "not a fusetrace trace"),
    (_newer, "upgrade fusetrace"), (_no_init, "does not start with the kernel's INIT")])
def test_bad_traces_exit_2_with_one_line_and_write_nothing(make, words: str, tmp_path: Path) -> None:
    trace, out = make(tmp_path), tmp_path / "out.fzt"
    res = fusetrace("replay", str(trace), "-w", str(out), "--", *MEMFS, str(tmp_path))
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_bad_command_lines_exit_2(tmp_path: Path) -> None:
    trace = _init_trace(tmp_path / "t.fzt")
    for args, words in ((["--mask", "size", "--", *MEMFS, str(tmp_path)], "bad mask"),
                        (["--mask", "NOSUCH.size", "--", *MEMFS, str(tmp_path)], "unknown opcode"),
                        (["--", *MEMFS, str(tmp_path / "missing")], "no mountpoint"),
                        ([], "no server command")):
        res = fusetrace("replay", str(trace), *args)
        assert res.returncode == 2, (args, res)
        assert words in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("route", [None, "device-open"])
def test_a_server_that_cannot_start_is_named_with_its_status_and_output(
        route: str | None, tmp_path: Path) -> None:
    """It exits before answering INIT: said at once (a 60 s timeout per request would
    outlast the test's 30 s), with its status and its last output first, never taken
    for a server that hangs. With the route of a server that opens /dev/fuse itself, the
    replay's copy of the connection waits for that open: the exit must end it too."""
    trace = tmp_path / "t.fzt"
    with TraceWriter(trace, {"source": "proxy"}) as w:
        if route:
            w.event("connected", route=route)
        w.request(bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) / FuseInitIn()))
        w.reply(bytes(FuseOutHeader(unique=2) / FuseInitOut()))
    (tmp_path / "mnt").mkdir()
    report = replay(trace, ["sh", "-c", "echo boom >&2; exit 3", "sh", str(tmp_path / "mnt")],
                    timeout=60)
    assert report.outcome == Outcome(End.EXITED, status=3, record=report.outcome.record,
                                     opcode=Opcode.INIT, before_init=True)
    assert report.error == "sh exited with status 3 before answering the kernel's INIT: it did not start"
    assert report.server_exit == "exited with status 3"
    lines = report.text().splitlines()
    assert lines[2:5] == [f"error: {report.error}", "the server's last output:", "  | boom"]
    assert "hangs" not in report.text()


def test_api_never_raises_on_a_bad_trace(tmp_path: Path) -> None:
    report = replay(_garbage(tmp_path), [*MEMFS, str(tmp_path)])
    assert not report.ok and "not a fusetrace trace" in (report.error or "")
    assert report.first_difference_text().startswith("error: ")


def test_masks_match_whole_runs_of_path_parts() -> None:
    masks = Masks(["GETATTR.size", "*.blocks"])
    assert masks.masked(Opcode.GETATTR, "fuse_attr_out.attr.size")
    assert not masks.masked(Opcode.GETATTR, "fuse_attr_out.attr.blksize")
    assert not masks.masked(Opcode.LOOKUP, "fuse_entry_out.attr.size")
    assert masks.masked(Opcode.READDIRPLUS, "direntplus[3].entry_out.attr.blocks")
    assert masks.masked(Opcode.STATX, "fuse_statx_out.stat.mtime.tv_sec")  # default: times
    assert not Masks(defaults=False).masked(Opcode.GETATTR, "fuse_attr_out.attr.mtime")
    assert Mask.parse("notify_store.offset").opcode == 1004
    with pytest.raises(ValueError):
        Mask.parse("GETATTR.")


def test_translation_catches_a_value_handed_out_twice() -> None:
    fhs = Table("file handle")
    assert fhs.learn(1, 7) is None
    assert fhs.learn(1, 7) is None  # the same open file again: fine
    assert "handed out again while it still stands for recorded file handle 1" in fhs.learn(2, 7)
    fhs.release(1, 2)
    fhs.release(2)
    assert fhs.learn(3, 7) is None  # released: free to be reused
    assert "still in use, but now comes back as 9" in fhs.learn(3, 9)
    assert fhs.rewrite(3) == 9 and fhs.rewrite(42) == 42


def test_ioctls_belong_to_the_request_that_makes_them() -> None:
    a = Attributor()
    a.request(30, Opcode.RELEASE, True)
    a.request(32, Opcode.OPEN, True)
    a.ioctl(1, DevIoctl.BACKING_CLOSE)  # RELEASE and OPEN outstanding: the RELEASE's
    a.ioctl(2, DevIoctl.BACKING_OPEN)
    a.request(34, Opcode.LOOKUP, True)
    a.reply(34)
    a.reply(30)
    a.reply(32)
    a.request(36, Opcode.FORGET, False)
    a.ioctl(3, DevIoctl.BACKING_CLOSE)  # nothing outstanding: the last request sent
    a.finish()
    assert a.owned == {30: [1], 32: [2], 36: [3]}


def _open_reply(unique: int, fh: int, backing_id: int) -> bytes:
    return bytes(FuseOutHeader(unique=unique)
                 / FuseOpenOut(fh=fh, open_flags=FOPEN_PASSTHROUGH, backing_id=backing_id))


def _release(unique: int, fh: int) -> bytes:
    return bytes(FuseInHeader(opcode=Opcode.RELEASE, unique=unique, nodeid=2)
                 / FuseReleaseIn(fh=fh))


def test_concurrent_releases_get_the_close_of_their_own_backing_id() -> None:
    """Two RELEASEs handled at once by two server threads: the close of id 5 comes second
    and the RELEASE of the handle that carried id 6 is answered first. Backing ids, not
    the order of replies, say whose close is whose."""
    a = Attributor()
    for unique, fh, backing_id, token in ((10, 0xB, 5, 1), (12, 0xC, 6, 2)):
        a.request(unique, Opcode.OPEN, True)
        a.ioctl(token, DevIoctl.BACKING_OPEN, backing_id)
        a.reply(unique, _open_reply(unique, fh, backing_id))
    a.request(20, Opcode.RELEASE, True, _release(20, 0xC))
    a.request(22, Opcode.RELEASE, True, _release(22, 0xB))
    a.ioctl(3, DevIoctl.BACKING_CLOSE, 6)
    a.ioctl(4, DevIoctl.BACKING_CLOSE, 5)
    a.reply(20)
    a.reply(22)
    a.finish()
    assert a.owned == {10: [1], 12: [2], 20: [3], 22: [4]}


def test_an_open_is_not_given_another_opens_backing_id() -> None:
    """Two OPENs at once: the one answered first carries id 8, so the BACKING_OPEN that
    returned 7 stays with the other."""
    a = Attributor()
    a.request(10, Opcode.OPEN, True)
    a.request(12, Opcode.OPEN, True)
    a.ioctl(1, DevIoctl.BACKING_OPEN, 7)
    a.ioctl(2, DevIoctl.BACKING_OPEN, 8)
    a.reply(12, _open_reply(12, 0xA, 8))
    a.reply(10, _open_reply(10, 0xB, 7))
    a.finish()
    assert a.owned == {10: [1], 12: [2]}


def test_an_open_without_passthrough_is_not_given_a_backing_open() -> None:
    """rsync's CREATE and an OPENDIR at once: the OPENDIR is answered first, without a
    backing id, so the BACKING_OPEN that returned 10 is the CREATE's."""
    a = Attributor()
    a.request(10, Opcode.CREATE, True)
    a.request(12, Opcode.OPENDIR, True)
    a.ioctl(1, DevIoctl.BACKING_OPEN, 10)
    a.reply(12, _open_reply(12, 0xA, 0))
    a.reply(10, bytes(FuseOutHeader(unique=10) / FuseEntryOut(nodeid=5)
                      / FuseOpenOut(fh=0xB, open_flags=FOPEN_PASSTHROUGH, backing_id=10)))
    a.finish()
    assert a.owned == {10: [1]}


def test_a_reused_handle_leaves_no_stale_reverse_entry() -> None:
    """The issue's reproducer: after RELEASE both directions are unbound, so a new handle
    that happens to take the old replayed value is not a conflict."""
    t = Table("file handle")
    assert t.learn(0xA, 1) is None
    t.release(0xA)
    assert t.learn(0xA, 2) is None
    assert t.learn(0xB, 1) is None
    assert t.forward == {0xA: 2, 0xB: 1}


# --- the emulated BACKING_OPEN, in the kernel's order -----------------------------------

def _backing_map(fd: int, flags: int = 0, padding: int = 0) -> bytes:
    return struct.pack("<iIQ", fd, flags, padding)


@pytest.fixture
def trap() -> Iterator[Callable[..., int]]:
    """Calls the emulation as the trap would for this very thread; returns the errno (or
    the id). `depth` is the max_stack_depth INIT negotiated (0: no passthrough)."""
    if os.geteuid() != 0:
        pytest.skip("BACKING_OPEN needs CAP_SYS_ADMIN")
    depth = [1]
    emulated = EmulatedKernel(lambda: depth[0])

    def call(fd: int, flags: int = 0, padding: int = 0, negotiated: int = 1,
             cmd: int = DevIoctl.BACKING_OPEN) -> int:
        depth[0] = negotiated
        arg = _backing_map(fd, flags, padding) if cmd == DevIoctl.BACKING_OPEN else struct.pack("<I", fd)
        out = emulated.perform(TrappedIoctl(cmd, arg, os.getpid(), threading.get_native_id(),
                                            fd, 0))
        return out.errno or -out.result

    yield call


def test_backing_open_errors_come_in_the_kernels_order(trap: Callable[..., int],
                                                      tmp_path: Path) -> None:
    """fs/fuse/backing.c: EPERM (passthrough off) before EINVAL (flags, padding) before
    EBADF before the file's type and stacking depth."""
    bad_fd = 1000
    (tmp_path / "f").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    with open(tmp_path / "f", "rb") as f:
        regular = f.fileno()
        assert trap(bad_fd, flags=1, negotiated=0) == errno.EPERM
        assert trap(bad_fd, flags=1) == errno.EINVAL
        assert trap(bad_fd, padding=1) == errno.EINVAL
        assert trap(regular, padding=1) == errno.EINVAL
        assert trap(bad_fd) == errno.EBADF
        d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        fifo = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        path_only = os.open(tmp_path / "f", os.O_PATH)
        try:
            assert trap(d) == errno.EISDIR
            assert trap(fifo) == errno.EINVAL
            assert trap(d, cmd=DevIoctl.PASSTHROUGH_OPEN_V1) == errno.EINVAL  # Android's
            assert trap(path_only) == -1  # fget_raw: an O_PATH fd is a file too
        finally:
            for fd in (d, fifo, path_only):
                os.close(fd)
        assert trap(regular) == -2  # the next id


def test_backing_open_on_a_stacked_filesystem_is_eloop(trap: Callable[..., int],
                                                      tmp_path: Path) -> None:
    """A file on overlayfs stacks one deep: ELOOP under max_stack_depth=1, fine under 2."""
    for sub in ("lower", "upper", "work", "mnt"):
        (tmp_path / sub).mkdir()
    (tmp_path / "lower" / "f").write_bytes(b"x")
    mnt = tmp_path / "mnt"
    opts = f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    try:
        mount("overlay", str(mnt), "overlay", 0, opts)
    except OSError as exc:
        pytest.skip(f"cannot mount overlayfs here: {exc}")
    try:
        with open(mnt / "f", "rb") as f:
            assert trap(f.fileno(), negotiated=1) == errno.ELOOP
            assert trap(1000, negotiated=1) == errno.EBADF  # EBADF still comes first
            assert trap(f.fileno(), negotiated=2) == -1
    finally:
        umount2(str(mnt))
