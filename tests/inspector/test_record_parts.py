"""The recorder's parts without a mount: reading a server's command line, the INIT mask,
putting spliced replies back together, the relay on a socketpair standing in for
/dev/fuse, the progress line, and the run-directory notes."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors import FuseInHeader, FuseOutHeader
from dissectors.constants import FUSE_INIT_EXT, FUSE_OVER_IO_URING, Opcode
from dissectors.structs import FuseData, FuseInitIn
from inspector import syscalls
from inspector.mounts import MountOptions
from inspector.exchange.args import (
    ArgumentError,
    ServerCommand,
    find_mountpoint,
    mount_plan,
    option_items,
)
from inspector.record.cleanup import Note, alive, notes, start_time
from inspector.record.progress import Progress, status_text
from inspector.record.relay import (
    Interleaved,
    Reassembler,
    Stats,
    mask_init,
)

# --- the server's command line -----------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    made = {}
    for name in ("src", "mnt", "cache"):
        (tmp_path / name).mkdir()
        made[name] = str(tmp_path / name)
    (tmp_path / "image.sqfs").write_bytes(b"")
    made["image"] = str(tmp_path / "image.sqfs")
    return made


@pytest.mark.parametrize("argv, expected", [
    (["squashfuse", "{image}", "{mnt}"], "{mnt}"),
    (["squashfuse", "-f", "-o", "allow_other", "{image}", "{mnt}"], "{mnt}"),
    (["fuse-overlayfs", "-o", "lowerdir={src},upperdir={cache}", "{mnt}"], "{mnt}"),
    (["python", "-m", "inspector.passthroughfs", "{src}", "{mnt}", "--misbehave",
      "stall=GETATTR:30", "-s", "100"], "{mnt}"),
    (["bindfs", "{src}", "{mnt}", "-o", "ro"], "{mnt}"),
    (["prog", "--", "{src}", "-weird-name-is-a-dir"], "-weird-name-is-a-dir"),
    (["prog", "-o", "{cache}", "{src}"], "{src}"),  # the -o value is never the mountpoint
])
def test_mountpoint_is_the_last_directory_argument(dirs: dict[str, str], tmp_path: Path,
                                                   argv: list[str], expected: str) -> None:
    (tmp_path / "-weird-name-is-a-dir").mkdir()
    os.chdir(tmp_path)
    argv = [a.format(**dirs) for a in argv]
    assert argv[find_mountpoint(argv)] == expected.format(**dirs)


def test_a_later_directory_option_value_needs_mountpoint(dirs: dict[str, str]) -> None:
    """The heuristic's known limit: `--cache DIR` after the mountpoint wins; say it."""
    argv = ["server", dirs["src"], dirs["mnt"], "--cache", dirs["cache"]]
    assert argv[find_mountpoint(argv)] == dirs["cache"]
    assert argv[find_mountpoint(argv, dirs["mnt"])] == dirs["mnt"]
    cmd = ServerCommand.parse(argv, dirs["mnt"])
    assert cmd.with_mountpoint("/dev/fd/5") == ["server", dirs["src"], "/dev/fd/5", "--cache",
                                                dirs["cache"]]


def test_mountpoint_errors(dirs: dict[str, str]) -> None:
    with pytest.raises(ArgumentError, match="no mountpoint"):
        find_mountpoint(["server", dirs["image"], "--opt"])
    with pytest.raises(ArgumentError, match="not among"):
        find_mountpoint(["server", dirs["mnt"]], "/somewhere/else")
    with pytest.raises(ArgumentError, match="no server command"):
        ServerCommand.parse([])


def test_option_items() -> None:
    argv = ["s", "-o", "ro,fsname=x", "-oallow_other", "-f", "-o", "a=b,,c", "--", "-o", "no"]
    assert option_items(argv) == ["ro", "fsname=x", "allow_other", "a=b", "c"]


def test_mount_plan_takes_the_kernels_options_and_leaves_the_rest() -> None:
    plan = mount_plan(["lowerdir=/a", "ro", "allow_other", "default_permissions", "fsname=src",
                       "subtype=sub", "max_read=65536", "noatime", "suid", "kernel_cache"],
                      "/usr/bin/server")
    opts = plan.options
    assert opts.flags == syscalls.MS_RDONLY | syscalls.MS_NODEV | syscalls.MS_NOATIME
    assert (opts.fstype, plan.source) == ("fuse.sub", "src")
    assert opts.data(7) == (f"fd=7,rootmode=40000,user_id={os.getuid()},group_id="
                            f"{os.getgid()},allow_other,default_permissions,max_read=65536")
    assert "lowerdir=/a" not in plan.applied and "kernel_cache" not in plan.applied
    assert plan.applied[:2] == ["ro", "allow_other"]


def test_mount_plan_defaults_like_libfuse() -> None:
    """Neither fsname nor subtype: the program's name is the subtype (libfuse's helper
    does that; measured with squashfuse, as is the plain "fuse" type with fsname=)."""
    plan = mount_plan([], "/usr/bin/squashfuse")
    assert (plan.options.fstype, plan.source) == ("fuse.squashfuse", "squashfuse")
    assert plan.options.flags == MountOptions().flags == syscalls.MS_NOSUID | syscalls.MS_NODEV
    plan = mount_plan(["fsname=/dev/x", "rw"], "prog")
    assert (plan.options.fstype, plan.source) == ("fuse", "/dev/x")
    plan = mount_plan(["ro", "rw"], "prog")  # later wins
    assert not plan.options.flags & syscalls.MS_RDONLY


@pytest.mark.parametrize("item", ["blkdev", "max_read=lots", "fsname="])
def test_mount_plan_refuses(item: str) -> None:
    with pytest.raises(ArgumentError, match=item.split("=")[0]):
        mount_plan([item], "prog")


# --- INIT ---------------------------------------------------------------------------------

def _init(flags: int, flags2: int = 0, **kw: int) -> bytes:
    return bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) /
                 FuseInitIn(flags=flags, flags2=flags2, max_readahead=131072, **kw))


def test_mask_init_clears_io_uring_and_says_why() -> None:
    offered = 0x3FFFFFFB | FUSE_INIT_EXT
    raw = _init(offered, (1 << 37 | FUSE_OVER_IO_URING) >> 32)
    out, reason = mask_init(raw, FUSE_OVER_IO_URING)
    assert out == _init(offered, 1 << 5)  # PASSTHROUGH and every low flag stay
    assert len(out) == len(raw) and out[:56] == raw[:56] and out[60:] == raw[60:]
    assert reason.startswith("masked OVER_IO_URING in INIT: ")
    assert "io_uring" in reason


def test_mask_init_leaves_what_it_need_not_touch() -> None:
    assert mask_init(_init(FUSE_INIT_EXT | 1), FUSE_OVER_IO_URING) is None
    # flags2 without INIT_EXT means nothing: not read, not touched
    assert mask_init(_init(1, FUSE_OVER_IO_URING >> 32), FUSE_OVER_IO_URING) is None
    assert mask_init(_init(1)[:50], 1 << 7) is None  # cut short: left alone
    compat = bytes(FuseInHeader(opcode=Opcode.INIT, unique=2)) + struct.pack("<IIII", 7, 35, 0, 1 << 7)
    out, _ = mask_init(compat, 1 << 7)  # a 7.35 INIT has no flags2 at all
    assert out == compat[:-4] + struct.pack("<I", 0)


# --- spliced replies --------------------------------------------------------------------

def _reply(unique: int, data: bytes) -> bytes:
    return bytes(FuseOutHeader(unique=unique) / FuseData(data=data))


def test_reassembler_puts_a_spliced_reply_back_together() -> None:
    pending = {10, 12}
    r = Reassembler(pending.__contains__)
    big = _reply(10, os.urandom(200_000))
    pieces = [big[:61456], big[61456:126976], big[126976:]]
    assert r.feed(memoryview(pieces[0])) is None
    small = _reply(12, b"x")
    assert r.feed(memoryview(small)) == (memoryview(small), None)  # another thread's reply
    assert r.feed(memoryview(pieces[1])) is None
    whole, sizes = r.feed(memoryview(pieces[2]))
    assert bytes(whole) == big and sizes == [len(p) for p in pieces]
    assert r.feed(memoryview(small)) == (memoryview(small), None)


def test_reassembler_passes_ordinary_and_malformed_messages_through() -> None:
    r = Reassembler({5}.__contains__)
    for raw in (_reply(5, b"abc"), b"\x10\x00", _reply(99, b"")[:16] + b"junk"):
        assert bytes(r.feed(memoryview(raw))[0]) == raw  # type: ignore[index]
    notify = bytes(FuseOutHeader(unique=0, error=2)) + b"\0" * 24
    assert bytes(r.feed(memoryview(notify))[0]) == notify  # type: ignore[index]


def test_reassembler_flush() -> None:
    r = Reassembler({1}.__contains__)
    assert r.flush() is None
    a = _reply(1, b"a" * 100_000)
    assert r.feed(memoryview(a[:1000])) is None
    assert r.flush() == (bytearray(a[:1000]), [1000])
    assert r.partial is None


def test_reassembler_refuses_two_interleaved_splices() -> None:
    r = Reassembler({1, 3}.__contains__)
    a, b = _reply(1, b"a" * 100_000), _reply(3, b"b" * 100_000)
    assert r.feed(memoryview(a[:65536])) is None
    with pytest.raises(Interleaved):
        r.feed(memoryview(b[:65536]))


# --- progress -----------------------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line() -> None:
    stats = Stats(requests=10, replies=9, request_bytes=1000, reply_bytes=3 << 20)
    assert status_text(stats, 2048, 1) == ("fusetrace: 19 messages (10 requests, 9 replies), "
                                           "3.0 MiB relayed, trace 2.0 KiB, 1 backing id open")
    assert "backing" not in status_text(stats, 0, None)
    tty = Tty()
    progress = Progress(lambda: stats, lambda: 10, lambda: 2, quiet=False, stream=tty, interval=0)
    progress.tick()
    progress.clear()
    assert tty.getvalue().startswith("\rfusetrace: 19 messages") and tty.getvalue().endswith("\r\x1b[K")
    quiet, pipe = Tty(), io.StringIO()
    Progress(lambda: stats, lambda: 0, lambda: None, quiet=True, stream=quiet, interval=0).tick()
    Progress(lambda: stats, lambda: 0, lambda: None, quiet=False, stream=pipe, interval=0).tick()
    assert quiet.getvalue() == pipe.getvalue() == ""  # -q, or not a terminal: nothing


# --- notes --------------------------------------------------------------------------------

def test_notes_know_a_dead_recorder_from_a_live_one(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(tmp_path / "run"))
    me = Note(os.getpid(), start_time(os.getpid()), "/mnt/a", "0:50", "/t.fzt", ["srv"])
    me.save()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = Note(int(gone.stdout), 1, "/mnt/b", "0:51", "/u.fzt", ["srv"])
    dead.save()
    reused = Note(os.getpid(), 12345, "/mnt/c", "0:52", "/v.fzt", ["srv"])  # pid reused
    reused.save()
    (tmp_path / "run" / "junk.json").write_text("{not json")
    found = {n.device: n.recorder_alive for n in notes()}
    assert found == {"0:50": True, "0:51": False, "0:52": False}
    assert alive(os.getpid(), start_time(os.getpid())) and not alive(None, None)
    dead.remove()
    dead.remove()  # twice is fine
    assert {n.device for n in notes()} == {"0:50", "0:52"}


def test_cli_help_lists_record_and_cleanup() -> None:
    res = subprocess.run([sys.executable, "-m", "inspector.cli", "-h"], capture_output=True,
                         text=True, timeout=30)
    assert "record" in res.stdout and "cleanup" in res.stdout
