"""Every way a `fusetrace record` session ends, on real mounts: the user unmounts, the
server crashes, Ctrl-C, `kill -9` of fusetrace (then `fusetrace cleanup`), a hung server,
a server fusetrace cannot record, and bad arguments. Each ends with a clear message,
nothing mounted, and no process left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from inspector.testing import is_mounted, record_command, recorded_server
from traces import TraceReader

from private_host import give_to_nobody
from record_support import (
    AS_NOBODY,
    dev_fuse_mode,
    record_as_nobody,
    MEMFS,
    PASSTHROUGHFS,
    REPO,
    alive,
    check_trace,
    events_of,
    fusetrace,
    make_source,
    mount_test,
    need,
    processes_mentioning,
)

if TYPE_CHECKING:
    from conftest import FsDirs


def _passthroughfs(dirs: FsDirs, *extra: str) -> list[str]:
    (dirs.source / "f").write_bytes(b"data\n")
    return [*PASSTHROUGHFS, str(dirs.source), str(dirs.mountpoint), "--no-passthrough", *extra]


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("fusetrace")]
    assert len(lines) == 1, text
    return lines[0]


@mount_test
def test_user_unmount_ends_it_with_status_0(isolated: Path, fs_dirs: FsDirs) -> None:
    with recorded_server(_passthroughfs(fs_dirs), fs_dirs.mountpoint, isolated / "t.fzt",
                         cwd=REPO) as rec:
        assert (fs_dirs.mountpoint / "f").read_bytes() == b"data\n"
        [pid] = rec.server_pids()
        assert rec.unmount_and_wait() == 0
    assert not alive(pid)
    decoded = check_trace(rec.trace)
    assert events_of(decoded, "unmount")[0]["by"] == "the user or the kernel"
    assert not events_of(decoded, "signal_sent")
    assert events_of(decoded, "enodev_given")  # its read said ENODEV, as from the kernel
    assert events_of(decoded, "server_exit") == [{"event": "server_exit", "pid": pid, "status": 0}]
    assert events_of(decoded, "session_end")[0]["server_ended"] == "itself"


@mount_test
def test_server_crash_unmounts_and_exits_nonzero(isolated: Path, fs_dirs: FsDirs) -> None:
    """The server is killed while a file is open: the unmount has to be lazy, and the
    open file then says ENOTCONN instead of hanging."""
    with recorded_server(_passthroughfs(fs_dirs), fs_dirs.mountpoint, isolated / "t.fzt",
                         cwd=REPO) as rec:
        busy = os.open(fs_dirs.mountpoint / "f", os.O_RDONLY)
        try:
            [pid] = rec.server_pids()
            os.kill(pid, signal.SIGKILL)
            assert rec.proc.wait(20) == 128 + signal.SIGKILL
            assert not is_mounted(fs_dirs.mountpoint)
            os.posix_fadvise(busy, 0, 0, os.POSIX_FADV_DONTNEED)
            with pytest.raises(OSError) as exc:
                os.pread(busy, 100, 0)  # not cached: must ask the server
            assert exc.value.errno == errno.ENOTCONN
        finally:
            with pytest.raises(OSError):
                os.close(busy)  # its FLUSH finds no server
    line = _one_line(rec.output())
    assert "killed by SIGKILL while mounted" in line and str(fs_dirs.mountpoint) in line
    decoded = check_trace(rec.trace, unanswered_ok=frozenset(range(1, 100)))
    assert events_of(decoded, "server_exit")[0]["signal_name"] == "SIGKILL"
    assert events_of(decoded, "unmount")[0] == {"event": "unmount", "by": "fusetrace",
                                                "how": "detached"}
    assert events_of(decoded, "session_end")[0]["exit_code"] == 128 + signal.SIGKILL


@mount_test
def test_ctrl_c_unmounts_and_a_daemonized_server_ends_by_itself(isolated: Path, fs_dirs: FsDirs) -> None:
    """squashfuse without -f daemonizes: the process to stop is not the one started."""
    need("squashfuse", "mksquashfs")
    make_source(fs_dirs.source)
    image = isolated / "image.sqfs"
    subprocess.run(["mksquashfs", str(fs_dirs.source), str(image), "-quiet", "-noappend"],
                   check=True, capture_output=True, timeout=30)
    with recorded_server(["squashfuse", str(image), str(fs_dirs.mountpoint)],
                         fs_dirs.mountpoint, isolated / "t.fzt") as rec:
        assert (fs_dirs.mountpoint / "dir" / "small.txt").read_bytes() == b"small file\n"
        [first] = rec.server_pids()
        [daemon] = [pid for pid, cmd in processes_mentioning(str(image))
                    if cmd.startswith("squashfuse")]  # the first one exited at once
        assert daemon != first
        started = time.monotonic()
        assert rec.interrupt() == 0, rec.output()
        assert time.monotonic() - started < 10
    assert not is_mounted(fs_dirs.mountpoint) and not alive(daemon)
    decoded = check_trace(rec.trace)
    assert not events_of(decoded, "signal_sent")  # unmounted, as `fusermount3 -u` would
    assert [e["pid"] for e in events_of(decoded, "server_exit")] == [first, daemon]
    [end] = events_of(decoded, "session_end")
    assert end["reason"] == "interrupted by SIGINT" and end["server_ended"] == "itself"
    assert events_of(decoded, "unmount")[0]["by"] == "fusetrace"


@mount_test
@pytest.mark.parametrize("name", ["t.fzt", "t.fzt.zst"])
def test_kill_9_of_fusetrace_leaves_a_readable_trace_and_cleanup_unmounts(
        isolated: Path, fs_dirs: FsDirs, name: str) -> None:
    """Plain or compressed, the trace holds every message relayed before the kill."""
    mnt = fs_dirs.mountpoint
    with recorded_server(_passthroughfs(fs_dirs), mnt, isolated / name, cwd=REPO) as rec:
        assert (mnt / "f").read_bytes() == b"data\n"
        [pid] = rec.server_pids()
        rec.proc.kill()
        rec.proc.wait(10)
        with pytest.raises(OSError) as exc:
            os.listdir(mnt)
        assert exc.value.errno == errno.ENOTCONN  # disconnected
        assert is_mounted(mnt)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the server ends by itself: its socket reads end-of-file"
        with TraceReader(rec.trace) as reader:
            records = list(reader)
            assert reader.tail is None
        assert any(r.is_reply and r.raw and r.raw.endswith(b"data\n") for r in records)
        assert records[-1].event != "session_end"

        res = fusetrace("record", "-q", "--", *_passthroughfs(fs_dirs))
        assert res.returncode == 2 and "fusetrace cleanup" in _one_line(res.stderr)

        res = fusetrace("cleanup")
        assert res.returncode == 0, res.stderr
        assert f"{mnt}: disconnected" in res.stdout and "pid" in res.stdout
        assert not is_mounted(mnt)
        assert fusetrace("cleanup").stdout.strip() == "no leftover fusetrace mounts"


@mount_test
def test_cleanup_of_a_named_mount_without_a_note(isolated: Path, fs_dirs: FsDirs) -> None:
    """The run directory was lost (or another tool's server died): a named disconnected
    FUSE mount is still recognised; a live one is left alone."""
    mnt = fs_dirs.mountpoint
    with recorded_server(_passthroughfs(fs_dirs), mnt, isolated / "t.fzt", cwd=REPO) as rec:
        res = fusetrace("cleanup", str(mnt))
        assert res.returncode == 1 and "being recorded" in res.stderr
        rec.proc.kill()
        rec.proc.wait(10)
        for note in (isolated / "run").glob("*.json"):
            note.unlink()
        res = fusetrace("cleanup", str(mnt))
        assert res.returncode == 0, res.stderr
        assert "disconnected" in res.stdout
        assert not is_mounted(mnt)
        res = fusetrace("cleanup", str(mnt))
        assert res.returncode == 2 and "no FUSE mount" in res.stderr


@mount_test
def test_hung_server_is_killed_on_the_second_ctrl_c(isolated: Path, fs_dirs: FsDirs) -> None:
    """A stat waits on a stalled reply and the server is stopped (SIGSTOP). The first
    Ctrl-C unmounts (lazily: the stat holds the mount) and waits, saying so; the second
    kills the server and aborts the connection: the stat fails instead of hanging."""
    argv = _passthroughfs(fs_dirs, "--misbehave", "stall=GETATTR:30", "-o", "attr_timeout=0")
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", cwd=REPO) as rec:
        [pid] = rec.server_pids()
        outcome: list[Any] = []
        waiting = threading.Thread(target=lambda: outcome.append(
            _errno_of(os.stat, fs_dirs.mountpoint / "f")), daemon=True)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive()
        os.kill(pid, signal.SIGSTOP)
        rec.proc.send_signal(signal.SIGINT)
        _wait_for_output(rec, "waiting for")
        assert rec.proc.poll() is None  # no timer kills it
        rec.proc.send_signal(signal.SIGINT)
        assert rec.proc.wait(10) == 130, rec.output()
        waiting.join(5)
        assert outcome == [errno.ECONNABORTED]  # what an abort gives a waiting request
        assert "killed" in rec.output()
    assert not is_mounted(fs_dirs.mountpoint) and not alive(pid)
    decoded = check_trace(rec.trace, unanswered_ok=frozenset(range(1, 100)))
    assert [e["signal_name"] for e in events_of(decoded, "signal_sent")] == ["SIGKILL"]
    assert events_of(decoded, "server_exit")[0]["signal_name"] == "SIGKILL"
    assert events_of(decoded, "session_end")[0]["server_ended"].startswith("SIGKILL")


@mount_test
def test_stalled_reply_is_waited_for_after_ctrl_c(isolated: Path, fs_dirs: FsDirs) -> None:
    """The same stall, short: after Ctrl-C the reply still comes, the stat gets it, and
    the server ends by itself once the lazily detached mount is let go."""
    argv = _passthroughfs(fs_dirs, "--misbehave", "stall=GETATTR:3", "-o", "attr_timeout=0")
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", cwd=REPO) as rec:
        outcome: list[Any] = []
        waiting = threading.Thread(target=lambda: outcome.append(
            _errno_of(os.stat, fs_dirs.mountpoint / "f")), daemon=True)
        waiting.start()
        waiting.join(1.0)
        assert rec.interrupt(timeout=20) == 0, rec.output()
        waiting.join(5)
        assert [o.st_size for o in outcome] == [5]
    decoded = check_trace(rec.trace)
    assert not events_of(decoded, "signal_sent")
    assert events_of(decoded, "server_exit")[0]["status"] == 0


def _wait_for_output(rec: Any, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in rec.output():
        assert time.monotonic() < deadline, rec.output()
        assert rec.proc.poll() is None, rec.output()
        time.sleep(0.1)


@mount_test
def test_slow_save_after_the_unmount_is_waited_for(isolated: Path, fs_dirs: FsDirs) -> None:
    """A server that writes for seconds after the unmount (as fuse-zip and archivemount
    write their archive): all its data reaches the disk and `record` exits 0."""
    from inspector.passthroughfs.saving import state_of

    saved = isolated / "state"
    argv = _passthroughfs(fs_dirs, "--save-to", str(saved), "--save-seconds", "5")
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", cwd=REPO) as rec:
        (fs_dirs.mountpoint / "written").write_bytes(b"x" * 100_000)
        assert rec.unmount_and_wait(timeout=40) == 0, rec.output()
        assert "waiting for" in rec.output()  # it says for whom, and how to stop
    assert saved.read_bytes() == state_of(str(fs_dirs.source))
    decoded = check_trace(rec.trace)
    assert not events_of(decoded, "signal_sent")
    assert events_of(decoded, "session_end")[0]["server_ended"] == "itself"


@mount_test
def test_a_server_that_never_exits_is_killed_only_on_ctrl_c(isolated: Path,
                                                            fs_dirs: FsDirs) -> None:
    argv = _passthroughfs(fs_dirs, "--save-to", str(isolated / "state"), "--save-seconds", "3600")
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", cwd=REPO) as rec:
        [pid] = rec.server_pids()
        subprocess.run(["umount", str(fs_dirs.mountpoint)], check=True, timeout=30)
        _wait_for_output(rec, "Ctrl-C stops waiting and kills it")
        time.sleep(1)
        assert rec.proc.poll() is None and alive(pid)
        rec.proc.send_signal(signal.SIGINT)
        assert rec.proc.wait(10) == 130
        assert "killed" in rec.output() and "lost" in rec.output()
    assert not alive(pid)
    decoded = check_trace(rec.trace)
    assert events_of(decoded, "session_end")[0]["server_ended"].startswith("SIGKILL")


@mount_test
def test_grace_is_an_opt_in_that_says_what_it_did(isolated: Path, fs_dirs: FsDirs) -> None:
    """--grace 1: SIGTERM after 1 s (passthroughfs ignores it while saving), SIGKILL
    after 2 s; `record` says so and exits non-zero."""
    argv = _passthroughfs(fs_dirs, "--save-to", str(isolated / "state"), "--save-seconds", "3600")
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", "--grace", "1",
                         cwd=REPO) as rec:
        assert rec.unmount_and_wait(timeout=20) == 128 + signal.SIGKILL
        assert "--grace 1: sent SIGTERM" in rec.output() and "SIGKILL" in rec.output()
    decoded = check_trace(rec.trace)
    assert [e["signal_name"] for e in events_of(decoded, "signal_sent")] == ["SIGTERM", "SIGKILL"]


@mount_test
def test_server_without_cap_sys_admin_gets_eperm_as_directly(isolated: Path,
                                                            fs_dirs: FsDirs) -> None:
    """BACKING_OPEN is made with the calling thread's credentials: a server whose
    capabilities lack CAP_SYS_ADMIN gets the kernel's EPERM, and `check` names why."""
    need("setpriv")
    (fs_dirs.source / "f").write_bytes(b"data\n")
    argv = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--",
            *PASSTHROUGHFS, str(fs_dirs.source), str(fs_dirs.mountpoint)]
    with recorded_server(argv, fs_dirs.mountpoint, isolated / "t.fzt", "--connect", "dev-fd",
                         cwd=REPO) as rec:
        assert (fs_dirs.mountpoint / "f").read_bytes() == b"data\n"
        assert rec.unmount_and_wait() == 0, rec.output()
    decoded = check_trace(rec.trace, anomalies_ok=frozenset({"backing-eperm-no-cap"}))
    opens = [e.record.meta for e in decoded.entries if e.record.kind.name == "IOCTL"]
    assert opens and all(m["errno"] == errno.EPERM and "recorder_error" not in m for m in opens)
    res = fusetrace("check", str(rec.trace))
    assert res.returncode == 1 and "backing-eperm-no-cap" in res.stdout
    assert "server thread that called it lacks CAP_SYS_ADMIN" in res.stdout


def _errno_of(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except OSError as exc:
        return exc.errno


@mount_test
def test_second_ctrl_c_forces(isolated: Path, fs_dirs: FsDirs) -> None:
    """A server that ignores SIGTERM (stopped): the second Ctrl-C skips the grace period."""
    pytest.importorskip("pyfuse3")
    with recorded_server([*MEMFS, str(fs_dirs.mountpoint)], fs_dirs.mountpoint,
                         isolated / "t.fzt", "--grace", "30") as rec:
        [pid] = rec.server_pids()
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        rec.proc.send_signal(signal.SIGINT)
        time.sleep(1)
        rec.proc.send_signal(signal.SIGINT)
        assert rec.proc.wait(10) == 130
        assert time.monotonic() - started < 8
    assert not is_mounted(fs_dirs.mountpoint) and not alive(pid)
    with TraceReader(rec.trace) as reader:
        assert [r for r in reader][-1].event == "session_end"


@mount_test
def test_server_that_never_answers_init_gets_a_clear_error(isolated: Path,
                                                         fs_dirs: FsDirs) -> None:
    """What a server fusetrace cannot record looks like from outside: it exits (here with
    a usage error) without ever answering INIT."""
    fake = [sys.executable, "-c", "import sys; sys.exit('usage: fake SOURCE MOUNTPOINT')",
            str(fs_dirs.mountpoint)]
    res = subprocess.run(record_command(fake, isolated / "t.fzt"), capture_output=True,
                         text=True, timeout=30, cwd=REPO)
    assert res.returncode == 2
    assert "usage: fake" in res.stderr  # the server's own stderr passes through
    line = _one_line(res.stderr)
    assert line.startswith("fusetrace: error: ")
    assert "exited with status 1 before it mounted" in line
    assert "fusetrace mounted nothing" in line
    assert not is_mounted(fs_dirs.mountpoint)
    res = subprocess.run(record_command(fake, isolated / "t2.fzt", "--connect", "dev-fd"),
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    line = _one_line(res.stderr)
    assert res.returncode == 2 and "before answering the kernel's INIT" in line
    assert "/dev/fd/N" in line and "--connect auto" in line


@mount_test
@pytest.mark.parametrize("script, status", [
    ("exit 0", "exited with status 0"),  # not a FUSE server at all
    ("mount -t tmpfs none \"$1\" && umount \"$1\"", "exited with status 0"),  # mounts another fs
    ("kill -TERM $$", "was killed by SIGTERM"),
])
def test_a_server_that_never_mounts_fuse_is_one_line(isolated: Path, fs_dirs: FsDirs,
                                                     script: str, status: str) -> None:
    mnt = fs_dirs.mountpoint
    trace = isolated / "t.fzt"
    res = subprocess.run(record_command(["sh", "-c", script, "sh", str(mnt)], trace),
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    line = _one_line(res.stderr)
    assert res.returncode == 2 and f"{status} before it mounted" in line, res.stderr
    assert not is_mounted(mnt)
    with TraceReader(trace) as reader:
        assert [r for r in reader][-1].event == "session_end" and reader.tail is None


@mount_test
def test_mountpoint_in_use(isolated: Path, fs_dirs: FsDirs) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "none", str(fs_dirs.mountpoint)], check=True)
    try:
        res = fusetrace("record", "-w", str(isolated / "t.fzt"), "--",
                        *_passthroughfs(fs_dirs))
        assert res.returncode == 2
        assert _one_line(res.stderr) == (f"fusetrace: error: mountpoint {fs_dirs.mountpoint} "
                                         f"is in use: tmpfs none is mounted there")
        assert not (isolated / "t.fzt").exists()
    finally:
        subprocess.run(["umount", str(fs_dirs.mountpoint)], check=True)


@pytest.mark.parametrize("args, message", [
    ([], "no server command given"),
    (["--"], "no server command given"),
    (["--connect", "dev-fd", "--", "true"], "no mountpoint among the server's arguments"),
    (["--connect", "helper", "-o", "ro", "--", "true", "{mnt}"], "-o applies to fusetrace's"),
    (["--grace", "0", "--", "true", "{mnt}"], "--grace must be more than 0"),
    (["--mountpoint", "/elsewhere", "--", "true", "{mnt}"], "--mountpoint /elsewhere: not among"),
    (["--", "no-such-server-xyz", "{mnt}"], "no-such-server-xyz: command not found"),
    (["--", "/nonexistent/server", "{mnt}"], "/nonexistent/server: not an executable file"),
    (["--", "true", "-o", "blkdev", "{mnt}"], "-o blkdev: fuseblk (block device) mounts"),
    (["-s", "-1", "--", "true", "{mnt}"], "-s/--snaplen must be 0"),
    (["--spin-us", "-5", "--", "true", "{mnt}"], "--spin-us must be between 0 and"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    trace = tmp_path / "t.fzt"
    res = fusetrace("record", "-w", str(trace), *[a.format(mnt=mnt) for a in args])
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("fusetrace: error: ")
    assert message in res.stderr
    assert not trace.exists() and not is_mounted(mnt)


def _squash_image(base: Path) -> Path:
    src = base / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello from squashfs\n")
    image = base / "image.sqfs"
    subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-noappend"], check=True,
                   capture_output=True, timeout=30)
    image.chmod(0o644)
    return image


@pytest.mark.timeout(60)
def test_ordinary_user_records_through_fusermount3(requires_fuse: None, nobody_dir: Path) -> None:
    """Not root: fusetrace mounts the way libfuse does (fusermount3, _FUSE_COMMFD)."""
    need("squashfuse", "mksquashfs", "fusermount3")
    image, mnt, trace = _squash_image(nobody_dir), nobody_dir / "mnt", nobody_dir / "t.fzt"
    [seen], unmounted, (code, err) = record_as_nobody(
        ["squashfuse", "-f", str(image), str(mnt)], mnt, trace, ["cat", str(mnt / "hello.txt")])
    assert seen.stdout == "hello from squashfs\n", (seen.stderr, err)
    assert unmounted.returncode == 0, unmounted.stderr
    assert code == 0, err
    events = [r.meta for r in TraceReader(str(trace)) if r.kind.name == "EVENT"]
    [mount] = [e for e in events if e["event"] == "mount"]
    assert "fusermount3" in mount["data"]
    assert any(e["event"] == "socket_buffers_capped" for e in events)


def test_ordinary_user_without_access_to_dev_fuse_is_told_why(nobody_dir: Path) -> None:
    need("fusermount3")
    mnt = nobody_dir / "mnt"
    mnt.mkdir()
    give_to_nobody(mnt)
    with dev_fuse_mode(0o600):
        res = subprocess.run([*AS_NOBODY, *record_command(["true", str(mnt)],
                                                          str(nobody_dir / "t.fzt"))],
                             capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode == 2, res
    line = _one_line(res.stderr)
    assert "fusermount3" in line and "/dev/fuse" in line
    assert not is_mounted(mnt)


@mount_test
def test_ctrl_c_at_the_terminal_lets_the_server_end_its_own_session(isolated: Path,
                                                                  fs_dirs: FsDirs) -> None:
    """Ctrl-C at a terminal reaches the foreground process group, server included, as
    when it runs directly: bindfs unmounts by itself (its umount2 is made for it) and
    exits 0; fusetrace sends it nothing and exits 0."""
    import fcntl
    import pty
    import termios

    need("bindfs")
    (fs_dirs.source / "f").write_bytes(b"data\n")
    argv = record_command(["bindfs", "-f", str(fs_dirs.source), str(fs_dirs.mountpoint)],
                          isolated / "t.fzt")
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    try:
        deadline = time.monotonic() + 15
        while not is_mounted(fs_dirs.mountpoint):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert (fs_dirs.mountpoint / "f").read_bytes() == b"data\n"
        time.sleep(0.5)  # the RELEASE after the read is asynchronous: let it be answered
        os.write(master, b"\x03")  # the terminal's line discipline sends SIGINT
        code = proc.wait(15)
        os.set_blocking(master, False)
        try:
            said = os.read(master, 65536).decode(errors="replace")
        except OSError:
            said = ""
        assert code == 0, said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert not is_mounted(fs_dirs.mountpoint)
    decoded = check_trace(isolated / "t.fzt")
    assert not events_of(decoded, "signal_sent")
    [unmount] = events_of(decoded, "server_unmount")
    assert unmount["errno"] == 0
    assert events_of(decoded, "unmount")[0]["by"].startswith("the server")
    [end] = events_of(decoded, "session_end")
    assert end["server_ended"] == "itself" and end["exit_code"] == 0
