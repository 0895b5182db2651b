"""`fusetrace record` with real servers on real mounts: the same workload with and without
the proxy sees the same data and the same errors, and the trace holds every message,
decodable, paired, with the INIT alteration explained.

Servers: the bundled passthroughfs (with passthrough: its ioctls go through the seccomp
trap; and `--no-passthrough`), Debian's fuse-overlayfs and squashfuse (both daemonize when
run without -f, so these also follow a daemonized server), bindfs (libfuse 2: opens
/dev/fuse and mounts by itself), and a pyfuse3 filesystem (tests/servers/memfs.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dissectors import IoctlCall, Message
from dissectors.constants import FOPEN_PASSTHROUGH, Opcode
from dissectors.ioctls import DevIoctl
from inspector.exchange.trap import IoctlTrap
from inspector.testing import mounted_server, recorded_server

from record_support import (
    FUSETRACE,
    MEMFS,
    PASSTHROUGHFS,
    REPO,
    check_trace,
    events_of,
    make_source,
    mount_test,
    need,
    requests_of,
    ro_workload,
    rw_workload,
)

if TYPE_CHECKING:
    from conftest import FsDirs

LARGE_READ = 128 * 1024




def _mount_line(mnt: Path) -> tuple[str, str, str]:
    """(mount flags, type, source) of the mount on `mnt`, from mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if fields[4] == str(mnt):
            return fields[5], tail[0], tail[1]
    raise AssertionError(f"{mnt} is not mounted")


def _large_reads(decoded: object) -> None:
    sizes = [m.brief.get("size") for m in requests_of(decoded, Opcode.READ)]  # type: ignore[arg-type]
    assert sizes and max(sizes) >= LARGE_READ, sizes


def _ended_by_unmount(decoded: object) -> None:
    [end] = events_of(decoded, "session_end")  # type: ignore[arg-type]
    assert end["reason"] == "unmounted" and end["exit_code"] == 0


def _recorded_like_direct(argv: list[str], mnt: Path, trace: Path, workload: Any,
                          expected: Any, *record_args: str, **popen: Any) -> Any:
    """Run `workload` on `argv` under `fusetrace record`, unmount, check it saw what the
    direct run saw and that the trace is whole; the decoded trace."""
    with recorded_server(argv, mnt, trace, *record_args, **popen) as rec:
        seen = workload(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    assert seen == expected
    return check_trace(rec.trace)


@mount_test
def test_passthroughfs_without_passthrough(isolated: Path, fs_dirs: FsDirs) -> None:
    src, mnt = fs_dirs
    argv = [*PASSTHROUGHFS, str(src), str(mnt), "--no-passthrough"]
    with mounted_server(argv, mnt, cwd=REPO):
        expected = rw_workload(mnt)
    shutil.rmtree(src)
    src.mkdir()
    decoded = _recorded_like_direct(argv, mnt, isolated / "t.fzt", rw_workload, expected,
                                    cwd=REPO)
    _large_reads(decoded)
    _ended_by_unmount(decoded)
    writes = requests_of(decoded, Opcode.WRITE)
    assert max(m.brief.get("size") for m in writes) > LARGE_READ  # max_write 1 MiB messages
    [exit_] = events_of(decoded, "server_exit")
    assert exit_["status"] == 0
    assert "ioctls_not_intercepted" not in [e.record.event for e in decoded.entries] or \
        events_of(decoded, "ioctls_not_intercepted")[0]["reason"]


def needs_trap() -> None:
    reason = IoctlTrap.available()
    if reason:
        pytest.skip(f"seccomp user notification: {reason}")


@mount_test
def test_passthroughfs_with_passthrough_through_the_trap(isolated: Path, fs_dirs: FsDirs) -> None:
    """The server's BACKING_OPEN/CLOSE, made on the relay socket, are done for real on
    /dev/fuse: the id reaches the kernel in the OPEN reply and reads never reach the server."""
    needs_trap()
    src, mnt = fs_dirs
    make_source(src)
    argv = [*PASSTHROUGHFS, str(src), str(mnt)]
    with recorded_server(argv, mnt, isolated / "t.fzt", cwd=REPO) as rec:
        from record_support import blob, read_uncached

        assert read_uncached(mnt / "big") == blob()
        assert rec.unmount_and_wait() == 0, rec.output()
    decoded = check_trace(rec.trace)
    calls = [e for e in decoded.entries if isinstance(e.decoded, IoctlCall)]
    opened = [e for e in calls if e.decoded.cmd == DevIoctl.BACKING_OPEN]  # type: ignore[union-attr]
    closed = [e for e in calls if e.decoded.cmd == DevIoctl.BACKING_CLOSE]  # type: ignore[union-attr]
    assert opened and all(e.record.meta["errno"] == 0 for e in opened)
    ids = {e.record.meta["result"] for e in opened}
    assert ids == {int.from_bytes(e.record.meta["arg"][:4], "little") for e in closed}
    assert opened[0].record.meta["path"] == str(src / "big")
    replies = [e.decoded for e in decoded.entries if isinstance(e.decoded, Message)
               and e.record.is_reply and e.decoded.brief.opcode == Opcode.OPEN]
    carried = {m.brief.get("backing_id") for m in replies
               if m.brief.get("open_flags") & FOPEN_PASSTHROUGH}
    assert carried == ids
    assert not requests_of(decoded, Opcode.READ), "passthrough reads reach the server"


@mount_test
def test_bindfs_opens_the_device_and_mounts_itself(isolated: Path, fs_dirs: FsDirs) -> None:
    """libfuse 2 as root: its open of /dev/fuse gets the relay, its mount(2) is done for it."""
    need("bindfs")
    needs_trap()
    src, mnt = fs_dirs
    make_source(src)
    argv = ["bindfs", "-f", "-o", "ro", str(src), str(mnt)]  # ro: the workload expects EROFS
    with mounted_server(argv, mnt):
        expected = ro_workload(mnt)
    decoded = _recorded_like_direct(argv, mnt, isolated / "t.fzt", ro_workload, expected)
    assert [e["route"] for e in events_of(decoded, "connected")] == ["device-open"]
    assert events_of(decoded, "device_open") and events_of(decoded, "server_mount")
    [init] = requests_of(decoded, Opcode.INIT)
    assert init.brief.get("minor") == 45  # the kernel's offer; libfuse 2 answers 7.19
    assert decoded.header["argv"] == argv
    _ended_by_unmount(decoded)


def _overlay(base: Path, mnt: Path, foreground: bool) -> list[str]:
    lower, upper, work = (base / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir(parents=True)
    make_source(lower)
    return ["fuse-overlayfs", *(["-f"] if foreground else []),
            "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(mnt)]


def _overlay_workload(mnt: Path) -> dict[str, object]:
    seen = {"lower": ro_workload_lower(mnt)}
    (mnt / "rw").mkdir()
    seen.update(rw_workload(mnt / "rw"))
    return seen


def ro_workload_lower(mnt: Path) -> dict[str, object]:
    """Reads of the lower layer (no copy-up)."""
    from record_support import blob, read_uncached

    return {"big_same": read_uncached(mnt / "big") == blob(),
            "small": (mnt / "dir" / "small.txt").read_bytes(),
            "readlink": (mnt / "link").readlink().as_posix()}


@mount_test
def test_fuse_overlayfs(isolated: Path, fs_dirs: FsDirs) -> None:
    need("fuse-overlayfs")
    mnt = fs_dirs.mountpoint
    with mounted_server(_overlay(isolated / "direct", mnt, foreground=True), mnt):
        expected = _overlay_workload(mnt)
    argv = _overlay(isolated / "proxied", mnt, foreground=False)  # daemonizes
    decoded = _recorded_like_direct(argv, mnt, isolated / "t.fzt", _overlay_workload, expected)
    _large_reads(decoded)
    _ended_by_unmount(decoded)
    assert decoded.header["argv"] == argv
    [mount] = [e.record.meta for e in decoded.entries if e.record.event == "mount"]
    assert mount["fstype"] == "fuse.fuse-overlayfs"  # as the server mounted it
    if IoctlTrap.available() is None:
        # libfuse splices its READ replies; the trap sends each one whole, so nothing
        # had to be put back together from pieces.
        end = decoded.entries[-1].record.meta
        assert end["spliced_replies_sent_whole"] > 0, end
        assert not any("fragments" in e.record.meta for e in decoded.entries)


@mount_test
def test_squashfuse(isolated: Path, fs_dirs: FsDirs) -> None:
    need("squashfuse", "mksquashfs")
    src, mnt = fs_dirs
    make_source(src)
    image = isolated / "image.sqfs"
    subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-noappend"], check=True,
                   capture_output=True, timeout=30)
    options = ["-o", "ro,fsname=sqimage,noatime"]  # mount options fusetrace must apply
    with mounted_server(["squashfuse", "-f", *options, str(image), str(mnt)], mnt):
        expected = ro_workload(mnt)
        direct = _mount_line(mnt)
    argv = ["squashfuse", *options, str(image), str(mnt)]  # daemonizes: its parent exits
    with recorded_server(argv, mnt, isolated / "t.fzt") as rec:
        seen = ro_workload(mnt)
        proxied = _mount_line(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    assert seen == expected
    assert seen["create"] == "EROFS"
    assert proxied == direct == ("ro,nosuid,nodev,noatime", "fuse", "sqimage")
    decoded = check_trace(rec.trace)
    _large_reads(decoded)
    _ended_by_unmount(decoded)
    exits = events_of(decoded, "server_exit")
    [start] = events_of(decoded, "server_start")
    assert exits[0] == {"event": "server_exit", "pid": start["pid"], "status": 0}
    assert len(exits) == 2 and exits[1]["pid"] != start["pid"], exits  # the daemon, reaped


@mount_test
def test_pyfuse3_memfs_keeping_whole_messages(isolated: Path, fs_dirs: FsDirs) -> None:
    pytest.importorskip("pyfuse3")
    mnt = fs_dirs.mountpoint
    argv = [*MEMFS, str(mnt)]
    with mounted_server(argv, mnt):
        expected = rw_workload(mnt)
    decoded = _recorded_like_direct(argv, mnt, isolated / "t.fzt", rw_workload, expected,
                                    "-s", "0")
    _large_reads(decoded)
    _ended_by_unmount(decoded)
    read_replies = [e.record for e in decoded.entries if e.record.is_reply
                    and isinstance(e.decoded, Message) and e.decoded.brief.opcode == Opcode.READ]
    assert not any(r.truncated for r in read_replies)  # -s 0 keeps everything
    assert max(len(r.raw or b"") for r in read_replies) >= LARGE_READ + 16
    assert decoded.header["snaplen"] == 0


@mount_test
def test_demo_records_through_the_proxy(isolated: Path) -> None:
    trace = isolated / "demo.fzt"
    res = subprocess.run([*FUSETRACE, "demo", "-w", str(trace)], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "fusetrace record -w" in res.stderr
    assert " -- mount device=" in res.stdout and "source=passthroughfs" in res.stdout
    assert "fusetrace show -v" in res.stdout
    decoded = check_trace(trace)
    _ended_by_unmount(decoded)
    if events_of(decoded, "ioctls_not_intercepted"):
        assert "No backing ids in this trace: passthrough ioctls were not intercepted" in res.stdout
    else:
        life = res.stdout.split("Lifecycle of the first backing id", 1)[1].split("\n\n")[0]
        events = [line.split()[2] for line in life.splitlines()[2:] if line[:8].strip().isdigit()]
        assert events == ["BACKING_OPEN", "OPEN", "RELEASE", "BACKING_CLOSE"], life
        assert "FUSE_DEV_IOC_BACKING_OPEN" in life and "path=" in life
        assert "open_flags=PASSTHROUGH" in life and "verdict: closed properly" in life
    assert "no anomalies" in res.stdout and "fusetrace check" in res.stdout
