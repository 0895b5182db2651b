"""Running a FUSE server, or one under `fusetrace record`, in the background and ending it
cleanly: what `fusetrace demo`, the pytest plugin, the benches and the tests share.

- `fuse_available()` says why mounting cannot work here, or None.
- `wait_for_mount()` polls /proc/self/mountinfo with a deadline and fails early, with the
  server's stderr, when the server died.
- `cleanup_mount()` undoes everything whatever state it is in: unmount (plain, then lazy),
  then SIGTERM, wait, SIGKILL. It never raises, so it belongs in a `finally`.
- `mounted_server()` combines them around a server command line.
- `recorded_server()` runs a server under `fusetrace record` instead, mountpoint included.

Mount points are compared the way mountinfo shows them, without stat()ing the mount
point itself: that would hang on a mount whose server stopped answering.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from inspector.mounts import mounts_at

log = logging.getLogger(__name__)

_UMOUNT_TIMEOUT = 10.0


def fuse_available() -> str | None:
    """Why FUSE mounts cannot be tested here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "mounting FUSE with mount(2) needs root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc.strerror}"
    return None


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    return bool(mounts_at(os.fspath(mountpoint)))


def _stderr_of(proc: subprocess.Popen[bytes], log_file: IO[bytes] | None) -> str:
    """What a finished server wrote to stderr (a pipe, or the file it was given)."""
    data: bytes | str = b""
    try:
        if log_file is not None:
            log_file.flush()
            data = Path(log_file.name).read_bytes()
        elif proc.stderr is not None:
            data = proc.stderr.read() or b""
    except (OSError, ValueError):
        pass
    text = data if isinstance(data, str) else data.decode(errors="replace")  # text mode or not
    return text.strip()


def wait_for_mount(mountpoint: str | os.PathLike[str], proc: subprocess.Popen[bytes],
                   timeout: float = 10.0, log_file: IO[bytes] | None = None) -> None:
    """Return once `mountpoint` is mounted; raise RuntimeError if `proc` exits first or
    the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if is_mounted(mountpoint):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before mounting "
                               f"{mountpoint}:\n{_stderr_of(proc, log_file)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} not mounted after {timeout:g} s")
        time.sleep(0.05)


def _umount(mountpoint: str, *options: str) -> bool:
    try:
        return subprocess.run(["umount", *options, mountpoint], capture_output=True,
                              timeout=_UMOUNT_TIMEOUT).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def unmount(mountpoint: str | os.PathLike[str]) -> None:
    """Unmount everything at `mountpoint`: plainly, or lazily when busy. Never raises."""
    path = os.fspath(mountpoint)
    for _ in range(8):  # mounts can be stacked
        if not is_mounted(path):
            return
        if not _umount(path) and not _umount(path, "-l"):
            log.warning("cannot unmount %s", path)
            return


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0,
                 grace: float = 0.0) -> None:
    """Wait `grace` seconds for it to exit by itself, then SIGTERM, wait, SIGKILL, wait;
    quiet about a process that is already gone."""
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    for sig in (proc.terminate, proc.kill):
        if proc.poll() is not None:
            break
        try:
            sig()
            proc.wait(timeout)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)  # reap it, even after SIGKILL


def cleanup_mount(mountpoint: str | os.PathLike[str],
                  proc: subprocess.Popen[bytes] | None = None, timeout: float = 5.0) -> None:
    """Unmount first (a FUSE server then exits by itself, given a moment), then stop the
    process."""
    unmount(mountpoint)
    stop_process(proc, timeout, grace=2.0)
    unmount(mountpoint)  # a process may have mounted again meanwhile


def _written(log_file: IO[bytes], final_log: str | None) -> str:
    """What a process wrote to its log file so far (all of it, kept, once it ended)."""
    if final_log is not None:
        return final_log
    log_file.flush()
    return Path(log_file.name).read_text(errors="replace")


@dataclass
class MountedServer:
    """A running server: its process and what it wrote so far (kept after it ends)."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path
    log_file: IO[bytes]
    final_log: str | None = None

    def stderr(self) -> str:
        return _written(self.log_file, self.final_log)


@contextlib.contextmanager
def mounted_server(argv: Sequence[str], mountpoint: str | os.PathLike[str],
                   timeout: float = 10.0, **popen: object) -> Iterator[MountedServer]:
    """Start `argv` (a server that mounts `mountpoint` itself), wait for the mount, and
    undo it all on exit. Output goes to a temporary file (a pipe nobody reads would fill
    up and block a chatty server); `stderr()` still answers after the exit."""
    with tempfile.NamedTemporaryFile(prefix="server-", suffix=".log") as log_file:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=log_file, **popen)  # type: ignore[call-overload]
        server = MountedServer(proc, Path(mountpoint), log_file)
        try:
            wait_for_mount(mountpoint, proc, timeout, log_file)
            yield server
        finally:
            cleanup_mount(mountpoint, proc)
            server.final_log = server.stderr()


@dataclass
class Recording:
    """A `fusetrace record` process, its mount and its trace."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path
    trace: Path
    log_file: IO[bytes]
    final_log: str | None = None

    def output(self) -> str:
        """What fusetrace and the server wrote to stdout/stderr so far."""
        return _written(self.log_file, self.final_log)

    def server_pids(self) -> list[int]:
        """Pids of the server processes the trace names so far: the one started, then
        any that exited (a daemonized server's daemon shows up only when it exits).
        Waits a little for the first: the mount appears just before the server starts."""
        from traces import TraceReader

        deadline = time.monotonic() + 10
        while True:
            pids: list[int] = []
            with TraceReader(self.trace) as reader:
                for rec in reader:
                    if rec.event in ("server_start", "server_exit") and rec.meta["pid"] not in pids:
                        pids.append(rec.meta["pid"])
            if pids or time.monotonic() > deadline or self.proc.poll() is not None:
                return pids
            time.sleep(0.02)

    def unmount_and_wait(self, timeout: float = 20.0) -> int:
        """What a user does: unmount, then fusetrace ends by itself. Returns its status."""
        subprocess.run(["umount", str(self.mountpoint)], check=True, capture_output=True,
                       timeout=_UMOUNT_TIMEOUT)
        return self.proc.wait(timeout)

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl-C: SIGINT to fusetrace alone. Returns its status."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


def record_command(server_argv: Sequence[str], trace: str | os.PathLike[str],
                   *options: str) -> list[str]:
    """The `fusetrace record` command line for `server_argv` (this interpreter's copy).
    `-P` keeps the working directory off sys.path: a `traces/` folder there would shadow
    the `traces` package (the flag is not inherited by the server)."""
    return [sys.executable, "-P", "-m", "inspector.cli", "record", "-q", "-w", os.fspath(trace),
            *options, "--", *server_argv]


@contextlib.contextmanager
def recorded_server(server_argv: Sequence[str], mountpoint: str | os.PathLike[str],
                    trace: str | os.PathLike[str], *options: str, timeout: float = 10.0,
                    **popen: Any) -> Iterator[Recording]:
    """Run `server_argv` (mountpoint included) under `fusetrace record -w trace`, wait
    for the mount, and undo it all on exit: fusetrace still running is interrupted
    (SIGINT), then killed; whatever is left mounted is unmounted."""
    with tempfile.NamedTemporaryFile(prefix="record-", suffix=".log") as log_file:
        proc = subprocess.Popen(record_command(server_argv, trace, *options),
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                **popen)
        rec = Recording(proc, Path(mountpoint), Path(trace), log_file)
        try:
            wait_for_mount(mountpoint, proc, timeout, log_file)
            yield rec
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            stop_process(proc, timeout=5.0, grace=20.0)
            cleanup_mount(mountpoint)
            rec.final_log = rec.output()
