"""One `fusetrace record` session: mount, start the server on a socket, relay, end cleanly.

Set-up, in this order, so that a failure leaves nothing behind: check the arguments
(server, root, mountpoint, options: one line and exit 2 for each problem), create the
trace, open /dev/fuse, make a SOCK_SEQPACKET socketpair with 16 MiB buffers (forced, as
root), mount(2) the mountpoint on the device, start the server with the mountpoint
argument replaced by `/dev/fd/N` (its end of the socket, passed with `pass_fds`; the
ioctl trap, when available, installs itself through `preexec_fn`), then relay.

The session ends, every way, through `_finish`:
- the kernel ends it (`umount`/`fusermount3 -u` by the user, or an abort): /dev/fuse
  reads ENODEV; the server is then told with SIGTERM (libfuse treats the end of its
  socket as a short read and would exit EIO), given a grace period, then SIGKILL. Exit 0.
- the server ends it (exit, crash, or closing its end): fusetrace unmounts, lazily if
  busy, and exits with the server's status (128+N for signal N; 1 if it exited 0 while
  still mounted), with a one-line reason.
- SIGINT/SIGTERM/SIGHUP to fusetrace: unmount, SIGTERM the server, SIGKILL after the
  grace period, finish the trace, exit 0. A second signal forces it: abort the connection,
  SIGKILL, exit 130.
A server that does not answer in time has its connection aborted through
/sys/fs/fuse/connections/N/abort (N from mountinfo: stat()ing the mount would hang), so
nothing on the machine stays blocked; so does a lazily unmounted mount whose server is
gone.

Servers that daemonize (libfuse without `-f`) are followed: the session lasts until the
last holder of the server's socket end closes it (the relay reads end-of-file), not until
the first process exits. fusetrace is a child subreaper, so a daemonized server becomes
its child and its exit status is recorded too; the holders are found in /proc when they
must be signalled. The server's stdin, stdout and stderr are fusetrace's.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from traces import TraceWriter

from .. import syscalls
from ..mounts import (
    BackgroundUnmount,
    abort_connection,
    canonical,
    fuse_device,
    mount_fuse,
    mounted_device,
    mounts_at,
)
from .args import ArgumentError, MountPlan, ServerCommand
from .cleanup import Note, leftover_note, start_time
from .flavour import Flavour, guess
from .progress import Progress
from .relay import NotBuilt, Relay, native, server_socketpair

if TYPE_CHECKING:
    from .trap import ServerMount

log = logging.getLogger(__name__)

GRACE = 5.0  # seconds a server gets after SIGTERM
INIT_WARNING = 10.0  # seconds before saying the server has not answered INIT
_UNMOUNT_WAIT = 3.0  # seconds a plain unmount may take before the connection is aborted
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class RecordConfig:
    """What `fusetrace record` was asked to do."""

    server: list[str]
    trace: str
    snaplen: int = 4096
    quiet: bool = False
    options: list[str] = field(default_factory=list)  # fusetrace's own -o items
    mountpoint: str | None = None  # --mountpoint: which server argument it is
    grace: float = GRACE
    spin_us: int | None = None  # None: SPIN_US when there is a CPU to spare, else 0


def _load_trap() -> tuple[Any, str | None]:
    """The ioctl trap class, or None and why it cannot be used."""
    try:
        from .trap import IoctlTrap
    except ImportError as exc:
        return None, f"the ioctl trap is not available ({exc})"
    reason = IoctlTrap.available()
    return (None, reason) if reason else (IoctlTrap, None)


def _check_program(program: str) -> None:
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise ArgumentError(f"{program}: not an executable file")
    elif shutil.which(program) is None:
        raise ArgumentError(f"{program}: command not found")


def _check_mountpoint(path: str) -> str:
    target = canonical(path)
    there = mounts_at(target)  # before any stat(): a dead FUSE mount there would fail it
    if there:
        what = f"{there[-1].fstype} {there[-1].source}"
        hint = ""
        if leftover_note(target):
            hint = "; a fusetrace recorder that died left it (disconnected): run fusetrace cleanup"
        elif there[-1].is_fuse:
            hint = "; unmount it first (fusermount3 -u, or fusetrace cleanup if it is disconnected)"
        raise ArgumentError(f"mountpoint {target} is in use: {what} is mounted there{hint}")
    if not os.path.isdir(target):
        raise ArgumentError(f"mountpoint {path}: not a directory")
    return target


class Session:
    """A checked configuration; `run()` records one session and returns the exit code."""

    def __init__(self, cfg: RecordConfig) -> None:
        """Check everything that can be checked before touching the system; raises
        ArgumentError (exit 2) with a one-line message."""
        server = list(cfg.server[1:] if cfg.server[:1] == ["--"] else cfg.server)
        self.command = ServerCommand.parse(server, cfg.mountpoint)
        if not os.path.exists("/dev/fuse"):
            raise ArgumentError("/dev/fuse is missing (modprobe fuse)")
        _check_program(server[0])
        self.target = _check_mountpoint(self.command.mountpoint)
        self.plan: MountPlan = self.command.mount_plan(cfg.options)
        if cfg.snaplen < 0:
            raise ArgumentError("-s/--snaplen must be 0 (keep all) or more")
        if cfg.spin_us is not None and not 0 <= cfg.spin_us <= 1_000_000:
            raise ArgumentError("--spin-us must be between 0 and 1000000")
        self.cfg = cfg
        self.trap_class, self.trap_missing = _load_trap()
        self.flavour = guess(server)
        if self.flavour is Flavour.DEVICE_OPEN and self.trap_class is None:
            raise ArgumentError(f"{server[0]} opens /dev/fuse and mounts by itself (libfuse 2); "
                                f"catching that needs the seccomp trap: {self.trap_missing}")
        # set in run()
        self.writer: TraceWriter | None = None
        self.devfd = -1
        self.device: str | None = None
        self.note: Note | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.trap: Any = None
        self.relay: Relay | None = None
        self.ours: socket.socket | None = None
        self.theirs: socket.socket | None = None
        self.progress: Progress | None = None
        self.theirs_ino = -1
        self.signals: list[int] = []
        self.wake = threading.Event()
        self.exits: dict[int, int] = {}  # pid → exit code (negative: signal), recorded
        self.started = time.monotonic()

    # --- the whole session --------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            try:
                self._start()
            except (OSError, RuntimeError) as exc:  # RuntimeError: the trap's hand-over
                self._finish("set-up failed", report=False)
                print(f"fusetrace: error: {exc}", file=sys.stderr)
                return 2
            return self._finish(self._wait())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        """Only note it: the main loop acts (handlers run between bytecodes of a thread
        that may hold locks)."""
        self.signals.append(signum)
        if len(self.signals) == 2 and not self.cfg.quiet:
            os.write(2, b"\nfusetrace: forcing: aborting the connection\n")

    @property
    def forced(self) -> bool:
        return len(self.signals) >= 2

    # --- set-up -----------------------------------------------------------------------

    def _header(self, server_argv: list[str]) -> dict[str, Any]:
        opts = self.plan.options
        return {"source": "proxy", "kernel": os.uname().release, "argv": self.command.argv,
                "server_argv": server_argv, "mountpoint": self.target,
                "options": self.plan.applied, "snaplen": self.cfg.snaplen,
                "mount": {"source": self.plan.source, "fstype": opts.fstype,
                          "flags": opts.flags}}

    def _start(self) -> None:
        syscalls.set_child_subreaper()
        self.ours, self.theirs, capped = server_socketpair()
        child_fd = self.theirs.fileno()
        device_open = self.flavour is Flavour.DEVICE_OPEN
        # libfuse 3 and our servers take /dev/fd/N; libfuse 2 opens the device and mounts
        # itself: its argv stays as typed and the trap hands it the relay and its mount to us.
        server_argv = (self.command.argv if device_open
                       else self.command.with_mountpoint(f"/dev/fd/{child_fd}"))
        self.writer = TraceWriter(self.cfg.trace, self._header(server_argv),
                                  appender=native().Appender)
        if capped:
            size = self.ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.writer.event("socket_buffers_capped", bytes=size,
                              why="forcing 16 MiB socket buffers needs CAP_NET_ADMIN; a "
                                  "message larger than this fails with EMSGSIZE")
        if os.geteuid() == 0:  # an ordinary user gets the device from fusermount3 instead
            self.devfd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        if not device_open:
            self._mount()
        if self.trap_class is not None:
            self.trap = self.trap_class(child_fd, self.devfd, self.writer,
                                        on_mount=self._server_mount if device_open else None)
        else:
            self.writer.event("ioctls_not_intercepted", reason=self.trap_missing)
        self.relay = Relay(self.devfd, self.ours, self.writer, self.cfg.snaplen,
                           spin_us=self.cfg.spin_us,
                           changed=self.wake.set)
        self.proc = subprocess.Popen(server_argv, pass_fds=[child_fd],
                                     preexec_fn=self.trap.child_setup if self.trap else None,
                                     start_new_session=False)
        self.theirs_ino = os.fstat(child_fd).st_ino
        self.theirs.close()  # the server's now: EOF comes when its last holder closes it
        self.writer.event("server_start", pid=self.proc.pid, argv=server_argv,
                          via=self.flavour.value)
        if self.note is not None:
            self.note.server_pid, self.note.server_started = self.proc.pid, start_time(self.proc.pid)
            self.note.save()
        if self.trap is not None:
            self.trap.start(self.proc)
        if not device_open:  # else once the server has mounted: an unmounted /dev/fuse says EPERM
            self.relay.start()

    def _mount(self) -> None:
        opts = self.plan.options
        self.devfd, how = mount_fuse(self.plan.source, self.target, opts,
                                     self.devfd if self.devfd >= 0 else None)
        self._mounted(self.plan.source, self.target, opts.fstype, opts.flags, how)

    def _mount_device(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        """mount(2) our /dev/fuse, and note it for `fusetrace cleanup`."""
        syscalls.mount(source, target, fstype, flags, data)
        self._mounted(source, target, fstype, flags, data)

    def _mounted(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        assert self.writer is not None
        self.device = fuse_device(target, fstype)
        self.writer.event("mount", device=self.device, source=source, fstype=fstype,
                          flags=flags, data=data)
        self.note = Note(os.getpid(), start_time(os.getpid()), target, self.device,
                         os.path.abspath(self.cfg.trace), self.command.argv)
        if self.proc is not None:
            self.note.server_pid, self.note.server_started = self.proc.pid, start_time(self.proc.pid)
        self.note.save()

    def _server_mount(self, req: ServerMount) -> int:
        """The trap's `on_mount`: a libfuse 2 server mounting the relay. Done for real on
        our /dev/fuse, where fusetrace expected it; elsewhere is refused (EPERM)."""
        if req.target != self.target:
            return errno.EPERM
        try:
            self._mount_device(req.source, req.target, req.fstype, req.flags,
                               f"fd={self.devfd}," + req.data if req.data else f"fd={self.devfd}")
        except OSError as exc:
            return exc.errno or errno.EIO
        assert self.relay is not None
        self.relay.start()
        self.wake.set()
        return 0

    # --- while it runs ----------------------------------------------------------------

    def _wait(self) -> str:
        """Relay until something ends the session; returns what did."""
        assert self.relay is not None and self.proc is not None and self.writer is not None
        trap, writer, relay = self.trap, self.writer, self.relay
        self.progress = progress = Progress(
            lambda: relay.stats, lambda: writer.bytes_written,
            (lambda: trap.open_backing_ids) if trap else (lambda: None), self.cfg.quiet)
        warned = False
        while True:
            self.wake.wait(0.1)
            self.wake.clear()
            self._reap()
            progress.tick()
            if self.signals:
                return f"interrupted by {signal.Signals(self.signals[0]).name}"
            if self.relay.broken:
                return "relay failed"
            if self.relay.unmounted.is_set():
                return "unmounted"
            if self.relay.server_closed.is_set():
                return "server closed the connection"
            status = self.exits.get(self.proc.pid)
            if status:  # a failure; 0 may be a daemonizing parent: wait for the socket
                return "server exited"
            if (not warned and not self.relay.init_answered.is_set()
                    and time.monotonic() - self.started > INIT_WARNING):
                warned = True
                progress.clear()
                print(f"fusetrace: {self.command.argv[0]} has not answered the kernel's INIT "
                      f"after {INIT_WARNING:g} s; does it take a /dev/fd/N mountpoint "
                      f"(libfuse >= 3.3)?", file=sys.stderr)

    def _reap(self) -> None:
        """Collect exit statuses: the server, and any descendant it left to us."""
        if self.proc is not None and self.proc.pid not in self.exits:
            if self.proc.poll() is not None:
                self._exited(self.proc.pid, self.proc.returncode)
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            if self.proc is not None and pid == self.proc.pid:
                self.proc.poll()
                if pid not in self.exits:
                    self._exited(pid, self.proc.returncode)
                continue
            try:
                _, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            self._exited(pid, os.waitstatus_to_exitcode(status))

    def _exited(self, pid: int, code: int) -> None:
        self.exits[pid] = code
        how: dict[str, Any] = {"status": code} if code >= 0 else {
            "signal": -code, "signal_name": signal.Signals(-code).name}
        self._event("server_exit", pid=pid, **how)

    def _event(self, name: str, **data: Any) -> None:
        if self.writer is not None and not self.writer.closed:
            try:
                self.writer.event(name, **data)
            except (OSError, ValueError) as exc:
                log.error("trace: %s", exc)

    # --- ending -----------------------------------------------------------------------

    def _finish(self, reason: str, report: bool = True) -> int:
        """Undo everything, whatever state set-up reached; returns the exit code and, with
        `report`, says why on stderr."""
        if self.progress is not None:
            self.progress.clear()
        relay = self.relay
        by_kernel = relay is not None and relay.unmounted.is_set() and reason == "unmounted"
        if by_kernel:
            self._event("unmount", by="user or kernel", how="/dev/fuse read ENODEV")
        elif self.device is not None:
            self._unmount()
        if self.proc is not None:
            self._stop_server(reason)
        if self.device is not None and (relay is None or relay.requests_running):
            if abort_connection(self.device):  # a lazily unmounted mount, still connected
                self._event("abort", device=self.device, why="no server left")
        if relay is not None and not relay.join(5.0) and self.ours is not None:
            self.ours.shutdown(socket.SHUT_RDWR)
            relay.join(2.0)
        if self.trap is not None:
            self.trap.stop()
        self._reap()
        code, message = self._verdict(reason)
        counts = {"requests": relay.stats.requests, "replies": relay.stats.replies} if relay else {}
        if self.trap is not None:
            counts["spliced_replies_sent_whole"] = self.trap.spliced
        self._event("session_end", reason=reason, exit_code=code, **counts)
        self._close()
        if not report:
            return code
        if message:
            print(f"fusetrace: {message}", file=sys.stderr)
        elif not self.cfg.quiet and self.writer is not None:
            print(f"fusetrace: {reason}; {self.writer.records} records in {self.cfg.trace}",
                  file=sys.stderr)
        return code

    def _unmount(self) -> None:
        """Unmount (lazily when busy) while the relay keeps going; after a few seconds, or
        a second Ctrl-C, abort."""
        assert self.device is not None
        worker = BackgroundUnmount(self.target, self.device, _UNMOUNT_WAIT)
        while not worker.done and not worker.overdue and not self.forced:
            worker.join(0.1)
        if not worker.done:
            if abort_connection(self.device):
                self._event("abort", device=self.device, why="unmount did not finish")
            worker.join(5.0)
        if worker.error is not None:
            self._event("proxy_error", reason=f"unmounting {self.target}: {worker.error.strerror}")
        elif worker.outcome:
            self._event("unmount", by="fusetrace", how=worker.outcome)

    def _holders(self) -> set[int]:
        """Processes holding the server's end of the socket, plus the server itself while
        it runs."""
        pids = syscalls.socket_holders(self.theirs_ino)
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return pids

    def _server_gone(self) -> bool:
        closed = self.relay is None or self.relay.server_closed.is_set()
        return closed and self.proc is not None and self.proc.poll() is not None

    def _wait_gone(self, seconds: float, allow_force: bool = True) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._reap()
            if self._server_gone() or (allow_force and self.forced):
                break
            time.sleep(0.05)
        return self._server_gone()

    def _stop_server(self, reason: str) -> None:
        """SIGTERM every holder, grace period, then abort the connection and SIGKILL."""
        if reason in ("server exited", "server closed the connection") and self._wait_gone(1.0):
            return
        holders = self._holders()
        self._kill(holders, signal.SIGTERM)
        if not self.forced and self._wait_gone(self.cfg.grace):
            return
        if self.device is not None and abort_connection(self.device):
            self._event("abort", device=self.device, why="server did not stop after SIGTERM")
        self._kill(holders | self._holders(), signal.SIGKILL)
        self._wait_gone(5.0, allow_force=False)

    def _kill(self, pids: set[int], sig: int) -> None:
        for pid in sorted(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
            self._event("signal_sent", pid=pid, signal=sig, signal_name=signal.Signals(sig).name)

    def _verdict(self, reason: str) -> tuple[int, str | None]:
        """Exit code and the one-line reason to print (None: print the summary)."""
        relay = self.relay
        if self.forced:
            return 128 + signal.SIGINT, None
        if relay is not None and relay.broken:
            return 1, f"{relay.broken}; unmounted {self.target}"
        if relay is not None and relay.trace_error:
            return 1, f"{relay.trace_error}; the trace is incomplete"
        if reason not in ("server exited", "server closed the connection"):
            return 0, None
        code = self.exits.get(self.proc.pid, 0) if self.proc is not None else 0
        failed = [c for c in self.exits.values() if c]
        if not code and failed:
            code = failed[-1]
        status = (f"was killed by {signal.Signals(-code).name}" if code < 0
                  else f"exited with status {code}")
        exit_code = 128 - code if code < 0 else code or 1
        name = self.command.argv[0]
        if relay is not None and not relay.init_answered.is_set():
            return exit_code, (
                f"{name} {status} before answering the kernel's INIT: fusetrace records "
                f"servers that take libfuse's /dev/fd/N mountpoint (libfuse >= 3.3); servers "
                f"that mount by themselves (libfuse 2, e.g. bindfs) or through fusermount3 "
                f"are not covered yet; nothing is left mounted")
        if code == 0:
            return 1, f"{name} closed its connection while mounted; unmounted {self.target}"
        return exit_code, f"{name} {status} while mounted; unmounted {self.target}"

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for sock in (self.ours, self.theirs):
            if sock is not None:
                sock.close()
        if self.devfd >= 0:
            os.close(self.devfd)
            self.devfd = -1
        if self.note is not None and (self.device is None
                                      or not mounted_device(self.target, self.device)):
            self.note.remove()


def record(cfg: RecordConfig) -> int:
    """`fusetrace record`: exit 2 with one line for bad arguments, else the session's code."""
    try:
        native()  # before anything is mounted
        session = Session(cfg)
    except (ArgumentError, NotBuilt) as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
    return session.run()
