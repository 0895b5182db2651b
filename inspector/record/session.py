"""One `fusetrace record` session: connect the server to the relay, relay, end as it would.

Set-up, in this order, so that a failure leaves nothing behind: check the arguments (one
line and exit 2 for each problem), create the trace, open /dev/fuse, make a SOCK_SEQPACKET
socketpair with 16 MiB buffers, start the server under the seccomp trap, then relay. How
the server gets its connection (`Connect`):

- `auto` (root), `device-open`, `helper`: the server's command line is left as typed. Its
  open of /dev/fuse (its own, or the fusermount3 helper's) gets the relay socket, and its
  mount(2) of it is made for real on fusetrace's /dev/fuse, with the caller's
  credentials, source, type, flags and options: /proc/self/mountinfo reads as for a direct
  mount. The new mount API (fsopen/fsconfig/fsmount/move_mount, libfuse 3.17+) is taken
  over the same way (`fsmount`). The trace records which way it went (`connected`).
- `dev-fd` (and `auto` without the trap, or as an ordinary user): fusetrace mounts from
  the server's `-o` options and hands it `/dev/fd/N` in place of its mountpoint (libfuse
  >= 3.3 takes that).

The session ends, every way, through `_finish`, and no timer ever kills the server:
- the kernel ends it (the user's `umount`, the server's own unmount, an abort): /dev/fuse
  reads ENODEV. Each server thread blocked reading the relay is then given ENODEV as the
  kernel would (`hangup`); threads waiting elsewhere get end-of-file once none is left
  reading. fusetrace then waits for every server process to exit, as long as it takes,
  saying for whom after a moment; Ctrl-C then kills them and says so (exit 130).
  `--grace S` opts into SIGTERM after S seconds and SIGKILL after 2S.
- the server ends it (exit, crash, closing its end): fusetrace unmounts, lazily if busy,
  and exits with the server's status, with a one-line reason.
- SIGINT/SIGTERM/SIGHUP to fusetrace: a Ctrl-C at the terminal reached the server too
  (same process group), which is given a moment to end its session itself; otherwise
  fusetrace unmounts as `fusermount3 -u` would. Then as for the kernel's end.
The exit code is the server's (0 when it ended cleanly), 2 when it never got going, 130
when it had to be killed. The trace's `session_end` says who ended the server and how,
and what it saw that a direct mount would not have shown it (`differences`).

When the trace cannot be written (a full disk), the mount is not touched: the relay and
the trap go on relaying and performing ioctls unrecorded, the trace ends with a
`recording_stopped` note (where, why, when) and `session_end`, written into the room the
writer keeps for them, and the exit code is 1 with one line saying where it stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import re
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
from ..exchange import creds, hangup
from ..exchange.args import ArgumentError, MountPlan, ServerCommand
from ..exchange.channel import server_socketpair
from ..exchange.flavour import Connect
from .cleanup import Note, leftover_note, start_time
from ..exchange.fsmount import FsAttached, FsCreate, MountApiHandler
from .processes import ServerProcesses, described, name_of
from .progress import Progress
from .relay import NotBuilt, Relay, native
from .signals import SignalWatch

if TYPE_CHECKING:
    from ..exchange.trap import ServerMount, ServerUnmount
    from .signals import Received

log = logging.getLogger(__name__)

INIT_WARNING = 10.0  # seconds before saying the server has not mounted / answered INIT
OWN_END_WAIT = 2.0  # seconds a server that got the terminal's Ctrl-C has to unmount itself
ANNOUNCE_AFTER = 2.0  # seconds of waiting before saying for whom
EOF_AFTER = 1.0  # seconds with no thread left reading the relay before end-of-file
TRACK_EVERY = 1.0  # seconds between looks for the socket's holders while relaying
_DEV_FD = re.compile(r"/dev/fd/(\d+)$")


@dataclass
class RecordConfig:
    """What `fusetrace record` was asked to do."""

    server: list[str]
    trace: str
    snaplen: int = 4096
    quiet: bool = False
    options: list[str] = field(default_factory=list)  # fusetrace's own -o items
    mountpoint: str | None = None  # --mountpoint: which server argument it is
    grace: float | None = None  # --grace: SIGTERM after this long, SIGKILL after twice
    connect: Connect = Connect.AUTO
    spin_us: int | None = None  # None: SPIN_US when there is a CPU to spare, else 0
    forward_only: bool = False  # relay the messages without recording them


def _load_trap() -> tuple[Any, str | None]:
    """The ioctl trap class, or None and why it cannot be used."""
    try:
        from ..exchange.trap import IoctlTrap
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


def _resolve(cfg: RecordConfig, trap_missing: str | None) -> tuple[Connect, str | None]:
    """The way the server will be connected, and why it is not what was asked (None: as
    asked). Raises ArgumentError when the asked way cannot be had."""
    asked = cfg.connect
    root = os.geteuid() == 0
    if asked is Connect.AUTO:
        if cfg.options:
            return Connect.DEV_FD, "fusetrace's own -o options need a mount of fusetrace's"
        if trap_missing:
            return Connect.DEV_FD, trap_missing
        if not root:
            return Connect.DEV_FD, ("as an ordinary user the server's own mount(2) and "
                                    "fusermount3 run unprivileged under the seccomp filter")
        return Connect.AUTO, None
    if asked.server_mounts:
        if trap_missing:
            raise ArgumentError(f"--connect {asked.value} needs the seccomp trap: {trap_missing}")
        if not root:
            raise ArgumentError(f"--connect {asked.value} needs root (as an ordinary user use "
                                f"--connect dev-fd)")
        if cfg.options:
            raise ArgumentError(f"-o applies to fusetrace's own mount: use it with "
                                f"--connect dev-fd, or give the options to the server")
    return asked, None


class Session:
    """A checked configuration; `run()` records one session and returns the exit code."""

    def __init__(self, cfg: RecordConfig) -> None:
        """Check everything that can be checked before touching the system; raises
        ArgumentError (exit 2) with a one-line message."""
        server = list(cfg.server[1:] if cfg.server[:1] == ["--"] else cfg.server)
        if cfg.snaplen < 0:
            raise ArgumentError("-s/--snaplen must be 0 (keep all) or more")
        if cfg.spin_us is not None and not 0 <= cfg.spin_us <= 1_000_000:
            raise ArgumentError("--spin-us must be between 0 and 1000000")
        if cfg.grace is not None and cfg.grace <= 0:
            raise ArgumentError("--grace must be more than 0 seconds")
        self.trap_class, self.trap_missing = _load_trap()
        self.connect, self.connect_note = _resolve(cfg, self.trap_missing)
        self.server_mounts = self.connect.server_mounts
        self.command = ServerCommand.parse(server, cfg.mountpoint, required=not self.server_mounts)
        if not os.path.exists("/dev/fuse"):
            raise ArgumentError("/dev/fuse is missing (modprobe fuse)")
        _check_program(server[0])
        mountpoint = self.command.mountpoint
        self.target: str | None = _check_mountpoint(mountpoint) if mountpoint else None
        self.plan: MountPlan | None = (self.command.mount_plan(cfg.options)
                                       if mountpoint else None)
        self.cfg = cfg
        # set in run()
        self.writer: TraceWriter | None = None
        self.devfd = -1
        self.device: str | None = None
        self.note: Note | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: ServerProcesses | None = None
        self.trap: Any = None
        self.relay: Relay | None = None
        self.ours: socket.socket | None = None
        self.theirs: socket.socket | None = None
        self.progress: Progress | None = None
        self.theirs_ino = -1
        self.watch: SignalWatch | None = None
        self.wake = threading.Event()
        self.started = time.monotonic()
        self.route: str | None = None  # how the server mounted: "device-open", "helper"
        self.unmounted_by: str | None = None  # who ended the mount, once known
        self.differences: list[str] = []  # what the server saw that it would not directly
        self.ended_by = "itself"  # how the server's processes ended
        self.told: dict[str, int] = {}  # "enodev": threads, "end-of-file": 1
        self._signals_at_end = 0
        self._killed: int | None = None  # the signal fusetrace had to end the server with
        self._walked: set[int] = set()  # threads followed to their next read
        self._hangup_refused = False

    # --- the whole session --------------------------------------------------------------

    def run(self) -> int:
        self.watch = SignalWatch(self._on_signal)
        try:
            try:
                self._start()
            except (OSError, RuntimeError) as exc:  # RuntimeError: the trap's hand-over
                self._finish("set-up failed", report=False)
                print(f"fusetrace: error: {exc}", file=sys.stderr)
                return 2
            return self._finish(self._wait())
        finally:
            self.watch.close()

    def _on_signal(self, got: Received) -> None:
        if len(self._signals) == self._signals_at_end + 1 and self._ending and not self.cfg.quiet:
            os.write(2, f"\nfusetrace: {got.name}: killing the server\n".encode())
        self.wake.set()

    @property
    def _signals(self) -> list[Received]:
        return self.watch.received if self.watch is not None else []

    _ending = False

    @property
    def forced(self) -> bool:
        """A signal came after the end had begun: stop waiting, kill."""
        return self._ending and len(self._signals) > self._signals_at_end

    # --- set-up -----------------------------------------------------------------------

    def _header(self, server_argv: list[str]) -> dict[str, Any]:
        header: dict[str, Any] = {
            "source": "proxy", "kernel": os.uname().release, "argv": self.command.argv,
            "server_argv": server_argv, "mountpoint": self.target,
            "snaplen": self.cfg.snaplen, "connect": self.connect.value}
        if self.plan is not None and not self.server_mounts:
            # what fusetrace will mount (from the server's -o); a server mounting by
            # itself chooses for itself: its `mount` event says what it chose
            opts = self.plan.options
            header["options"] = self.plan.applied
            header["mount"] = {"source": self.plan.source, "fstype": opts.fstype,
                               "flags": opts.flags}
        return header

    def _start(self) -> None:
        syscalls.set_child_subreaper()
        self.ours, self.theirs, capped = server_socketpair()
        child_fd = self.theirs.fileno()
        server_argv = (self.command.argv if self.server_mounts
                       else self.command.with_mountpoint(f"/dev/fd/{child_fd}"))
        self.writer = TraceWriter(self.cfg.trace, self._header(server_argv))
        if self.cfg.forward_only:
            self.writer.event("messages_not_recorded", reason="record --forward-only: the "
                              "requests, replies and notifications were relayed, not recorded")
        if self.connect_note:
            self.writer.event("connect_fallback", asked=self.cfg.connect.value,
                              used=self.connect.value, why=self.connect_note)
        if capped:
            size = self.ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.writer.event("socket_buffers_capped", bytes=size,
                              why="forcing 16 MiB socket buffers needs CAP_NET_ADMIN: the "
                                  "server's INIT reply is lowered to requests that fit, and "
                                  "any other message larger than this fails with EMSGSIZE")
        if os.geteuid() == 0:  # an ordinary user gets the device from fusermount3 instead
            self.devfd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        if not self.server_mounts:
            self._mount()
        if self.trap_class is not None:
            self.trap = self.trap_class(
                child_fd, self.devfd, self.writer,
                on_mount=self._server_mount if self.server_mounts else None,
                on_unmount=self._server_unmount,
                on_fsmount=(MountApiHandler(self._server_fscreate, self._server_attached)
                            if self.server_mounts else None))
        else:
            self.writer.event("ioctls_not_intercepted", reason=self.trap_missing)
        # without the trap a spliced reply arrives in pieces: one reply lane keeps them in order
        self.relay = Relay(self.devfd, self.ours, self.writer, self.cfg.snaplen,
                           spin_us=self.cfg.spin_us, changed=self.wake.set,
                           lanes=None if self.trap is not None else 1,
                           record_messages=not self.cfg.forward_only)
        trap = self.trap

        def child_setup() -> None:
            SignalWatch.child_setup()
            if trap is not None:
                trap.child_setup()

        # a server that mounts by itself gets no extra descriptor: it opens the relay
        self.proc = subprocess.Popen(server_argv, pass_fds=[] if self.server_mounts else [child_fd],
                                     preexec_fn=child_setup)
        self.theirs_ino = os.fstat(child_fd).st_ino
        self.theirs.close()  # the server's now: EOF comes when its last holder closes it
        self.procs = ServerProcesses(self.proc, self.theirs_ino, self._exited)
        self.writer.event("server_start", pid=self.proc.pid, argv=server_argv,
                          connect=self.connect.value)
        if self.note is not None:
            self.note.server_pid, self.note.server_started = self.proc.pid, start_time(self.proc.pid)
            self.note.save()
        if self.trap is not None:
            self.trap.start(self.proc)
        if not self.server_mounts:  # else once it has mounted: an unmounted /dev/fuse says EPERM
            self.relay.start()

    def _mount(self) -> None:
        assert self.plan is not None and self.target is not None
        opts = self.plan.options
        self.devfd, how = mount_fuse(self.plan.source, self.target, opts,
                                     self.devfd if self.devfd >= 0 else None)
        self._mounted(self.plan.source, self.target, opts.fstype, opts.flags, how)

    def _mounted(self, source: str, target: str, fstype: str, flags: int, data: str,
                 device: str | None = None) -> None:
        assert self.writer is not None
        self.target = target
        self.device = device or fuse_device(target, fstype)
        self.writer.event("mount", device=self.device, source=source, fstype=fstype,
                          flags=flags, data=data)
        self.note = Note(os.getpid(), start_time(os.getpid()), target, self.device,
                         os.path.abspath(self.cfg.trace), self.command.argv)
        if self.proc is not None:
            self.note.server_pid, self.note.server_started = self.proc.pid, start_time(self.proc.pid)
        self.note.save()

    def _server_mount(self, req: ServerMount) -> int:
        """The trap's `on_mount`: the server (or its helper) mounting the relay. Made for
        real on our /dev/fuse where it asked, as it asked, with the caller's credentials;
        0 or the kernel's errno, as the server would have had it."""
        if self.route is not None:
            return errno.EBUSY  # one relay, one mount
        data = f"fd={self.devfd}," + req.data if req.data else f"fd={self.devfd}"
        try:
            with creds.assumed(creds.of_thread(req.pid, req.tid)):
                syscalls.mount(req.source, req.target, req.fstype, req.flags, data)
        except creds.RestoreError as exc:
            if exc.body_done:  # mounted: the session's end must unmount it
                self._mounted(req.source, req.target, req.fstype, req.flags, data)
            raise
        except OSError as exc:
            return exc.errno or errno.EIO
        self.route = ("helper" if os.path.basename(req.program).startswith("fusermount")
                      else "device-open")
        self._mounted(req.source, req.target, req.fstype, req.flags, data)
        self._event("connected", route=self.route, program=req.program, pid=req.pid)
        assert self.relay is not None
        self.relay.start()
        self.wake.set()
        return 0

    def _server_fscreate(self, req: FsCreate) -> int:
        """The trap's `on_fsmount.create`: the server (or its helper) creating a FUSE
        filesystem on the relay with the new mount API. Made on our /dev/fuse (its `fd=`
        is resolved here, at CMD_CREATE) with the caller's credentials; 0 or the kernel's
        errno. The connection exists from then on, so the relay starts, as after mount(2)."""
        if self.route is not None:
            return errno.EBUSY  # one relay, one mount
        try:
            with creds.assumed(creds.of_thread(req.pid, req.tid)):
                syscalls.fsconfig(req.context, syscalls.Fsconfig.SET_STRING, "fd",
                                  str(self.devfd))
                syscalls.fsconfig(req.context, req.command)
        except OSError as exc:
            return exc.errno or errno.EIO
        self.route = "fsmount"
        self._event("connected", route=self.route, program=req.program, pid=req.pid)
        assert self.relay is not None
        self.relay.start()
        self.wake.set()
        return 0

    def _server_attached(self, req: FsAttached) -> None:
        """The trap's `on_fsmount.attached`: that filesystem's mount moved into place;
        recorded as its mount(2) would have been."""
        data = f"fd={self.devfd}," + req.data if req.data else f"fd={self.devfd}"
        self._mounted(req.source, req.target, req.fstype, req.flags, data, req.device)
        self.wake.set()

    def _server_unmount(self, req: ServerUnmount) -> int | None:
        """The trap's `on_unmount`: a server process unmounting. Ours while mounted: done
        for real with the caller's credentials. Ours and already gone (the user unmounted
        first): answered 0, since directly its poll of /dev/fuse would have said POLLERR
        and it would not have asked. Anything else runs untouched (None)."""
        dev_fd = _DEV_FD.match(req.target)
        if dev_fd and self.trap is not None and self.trap.is_relay(req.pid, int(dev_fd.group(1))):
            self._event("server_unmount", pid=req.pid, target=req.target, errno=0,
                        note="the server unmounted the /dev/fd/N it was given: answered 0")
            return 0
        if self.target is None or canonical(req.target) != self.target or self.device is None:
            return None
        if not mounted_device(self.target, self.device):
            self.differences.append(
                f"its umount2({req.target}) after the unmount was answered 0 by fusetrace "
                f"(directly it would have seen POLLERR on /dev/fuse and not called it)")
            self._event("server_unmount", pid=req.pid, target=req.target, errno=0,
                        note="already unmounted: answered 0")
            return 0
        err, self.unmounted_by = 0, f"the server (pid {req.pid})"  # before: the relay sees it at once
        try:
            with creds.assumed(creds.of_thread(req.pid, req.tid)):
                syscalls.umount2(self.target, req.flags)
        except OSError as exc:
            err, self.unmounted_by = exc.errno or errno.EIO, None
        self._event("server_unmount", pid=req.pid, target=req.target, flags=req.flags,
                    errno=err)
        return err

    # --- while it runs ----------------------------------------------------------------

    def _wait(self) -> str:
        """Relay until something ends the session; returns what did."""
        assert self.relay is not None and self.procs is not None and self.writer is not None
        trap, writer, relay, procs = self.trap, self.writer, self.relay, self.procs
        self.progress = progress = Progress(
            lambda: relay.stats, lambda: writer.bytes_written,
            (lambda: trap.open_backing_ids) if trap else (lambda: None), self.cfg.quiet)
        warned = False
        tracked = 0.0
        closed_at: float | None = None
        while True:
            self.wake.wait(0.1)
            self.wake.clear()
            procs.reap()
            progress.tick()
            now = time.monotonic()
            if now - tracked > TRACK_EVERY:
                procs.track()
                tracked = now
            if self.relay.broken:
                return "relay failed"
            if trap is not None and trap.failed:
                return "recorder error"
            if self.device is not None and self.relay.unmounted.is_set():
                return "unmounted"
            if self._signals and not self._server_ends_itself(now):
                return f"interrupted by {self._signals[0].name}"
            ended = self.relay.server_closed.is_set() or bool(procs.main_status)
            if ended and self._mount_gone():
                return "unmounted"  # the server unmounted, then closed before /dev/fuse said so
            if ended and closed_at is None:
                closed_at = now
            if (ended and procs.main_status is None and closed_at is not None
                    and now - closed_at < OWN_END_WAIT):
                continue  # libfuse 2 closes its device first, then unmounts: let it
            if self.relay.server_closed.is_set():
                return "server closed the connection"
            if procs.main_status:  # a failure; 0 may be a daemonizing parent: wait for the socket
                return "server exited"
            if (procs.main_status is not None and self.device is None
                    and not procs.children_left() and not procs.track()):
                return "server exited"  # it never mounted and nothing of it is left
            if not warned and now - self.started > INIT_WARNING and not relay.init_answered.is_set():
                warned = True
                progress.clear()
                print(f"fusetrace: {self._not_yet()}", file=sys.stderr)

    def _mount_gone(self) -> bool:
        return (self.device is not None and self.target is not None
                and not mounted_device(self.target, self.device))

    def _server_ends_itself(self, now: float) -> bool:
        """After a Ctrl-C at the terminal that the server got too: whether to give it more
        time to unmount by itself."""
        first = self._signals[0]
        assert self.procs is not None
        return (first.from_terminal and len(self._signals) == 1 and self.device is not None
                and os.getpgid(0) == _pgid(self.proc.pid if self.proc else 0)
                and now - first.at < OWN_END_WAIT and self.procs.main_status is None)

    def _not_yet(self) -> str:
        name = self.command.argv[0]
        if self.device is None and self.server_mounts:
            return (f"{name} has not mounted anything after {INIT_WARNING:g} s (still waiting; "
                    f"Ctrl-C stops)")
        if self.device is None:
            return f"{name} has not mounted after {INIT_WARNING:g} s"
        hint = (" does it take a /dev/fd/N mountpoint (libfuse >= 3.3)? as root, "
                "--connect auto lets it mount by itself" if not self.server_mounts else "")
        return f"{name} has not answered the kernel's INIT after {INIT_WARNING:g} s;{hint}"

    def _exited(self, pid: int, code: int) -> None:
        how: dict[str, Any] = {"status": code} if code >= 0 else {
            "signal": -code, "signal_name": signal.Signals(-code).name}
        self._event("server_exit", pid=pid, **how)
        self.wake.set()

    def _event(self, name: str, **data: Any) -> None:
        """Record a session event; once the trace has stopped (disk full …) nothing but
        the closing records is written, and the stop is reported at the end."""
        if self.writer is not None and not self.writer.closed and self.writer.stopped is None:
            try:
                self.writer.event(name, **data)
            except (OSError, ValueError) as exc:
                if self.writer.stopped is None:
                    log.error("trace: %s", exc)

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        print(f"fusetrace: {message}", file=sys.stderr)

    # --- ending -----------------------------------------------------------------------

    def _finish(self, reason: str, report: bool = True) -> int:
        """Undo everything, whatever state set-up reached; returns the exit code and, with
        `report`, says why on stderr."""
        if self.progress is not None:
            self.progress.clear()
        self._ending, self._signals_at_end = True, len(self._signals)
        relay = self.relay
        if reason == "unmounted":
            how = ("/dev/fuse read ENODEV" if relay is not None and relay.unmounted.is_set()
                   else "gone from mountinfo")
            self._event("unmount", by=self.unmounted_by or "the user or the kernel", how=how)
        elif self.device is not None:
            self._unmount()
        if self.procs is not None:
            if reason == "set-up failed":  # nothing of the user's is in it yet
                self._kill(signal.SIGKILL, "set-up failed")
            else:
                self._end_server(reason)
        if self.device is not None and (relay is None or relay.requests_running):
            if abort_connection(self.device):  # a lazily unmounted mount, still connected
                self._event("abort", device=self.device, why="no server left")
        if relay is not None and not relay.join(5.0) and self.ours is not None:
            self.ours.shutdown(socket.SHUT_RDWR)
            relay.join(2.0)
        if self.trap is not None:
            self.trap.stop()
        if self.procs is not None:
            self.procs.reap()
        if self.writer is not None and not self.writer.closed:
            self.writer.settle()  # compressed: every record framed, so `stopped` is final
        noted = self._note_stop()
        code, message = self._verdict(reason, noted)
        self._closing_event("session_end", **self._summary(reason, code))
        self._close()
        if not report:
            return code
        if message:
            print(f"fusetrace: {message}", file=sys.stderr)
        elif not self.cfg.quiet and self.writer is not None:
            print(f"fusetrace: {reason}; {self.writer.records} records in {self.cfg.trace}",
                  file=sys.stderr)
        return code

    def _note_stop(self) -> bool | None:
        """Say at the trace's end where and why recording stopped, if it did (into the
        room the writer kept for it); None when it did not stop, False when even the
        note did not fit."""
        stopped = self.writer.stopped if self.writer is not None else None
        if stopped is None:
            return None
        err, records, size, when = stopped
        return self._closing_event(
            "recording_stopped", errno=err, reason=os.strerror(err), records=records,
            bytes=size, at=when)

    def _closing_event(self, name: str, **data: Any) -> bool:
        """A closing record: written even after the trace stopped; True when it was."""
        if self.writer is None or self.writer.closed:
            return False
        try:
            self.writer.closing_event(name, **data)
        except (OSError, ValueError) as exc:
            if self.writer.stopped is None:
                log.error("trace: %s", exc)
            return False
        return True

    def _summary(self, reason: str, code: int) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": reason, "exit_code": code, "server_ended": self.ended_by}
        if self.told:
            out["server_told"] = self.told
        if self.differences:
            out["differences"] = self.differences
        if self.relay is not None:
            out["requests"], out["replies"] = self.relay.stats.requests, self.relay.stats.replies
        if self.trap is not None:
            out["spliced_replies_sent_whole"] = self.trap.spliced
        if self.procs is not None:
            out["exits"] = {str(pid): c for pid, c in self.procs.exits.items()}
        return out

    def _unmount(self) -> None:
        """Unmount (lazily when busy) while the relay keeps going, for as long as the
        kernel takes (it may be writing back to the server). Aborted only when nothing is
        left to answer it, or on a signal."""
        assert self.device is not None and self.target is not None
        worker = BackgroundUnmount(self.target, self.device, ANNOUNCE_AFTER)
        said = False
        while not worker.done:
            worker.join(0.1)
            if self.procs is not None:
                self.procs.reap()
            gone = self.procs is None or not self.procs.alive()
            if not worker.done and (self.forced or gone):
                if abort_connection(self.device):
                    self._event("abort", device=self.device,
                                why="signal" if self.forced else "no server left to answer")
                worker.join(5.0)
                break
            if worker.overdue and not said:
                said = True
                self._say(f"unmounting {self.target}: waiting for the server to answer "
                          f"(writeback); Ctrl-C aborts the connection")
        if worker.error is not None:
            self._event("proxy_error", reason=f"unmounting {self.target}: {worker.error.strerror}")
        elif worker.outcome:
            self.unmounted_by = "fusetrace"
            self._event("unmount", by="fusetrace", how=worker.outcome)

    def _end_server(self, reason: str) -> None:
        """Wait until every server process has exited, however long that takes; tell the
        ones still reading the relay that the session is over as the kernel would."""
        procs = self.procs
        assert procs is not None
        procs.reap()
        procs.track()
        if not procs.alive():
            return
        if self.device is None and reason.startswith("interrupted") and not self._signals[0].from_terminal:
            self._kill(signal.SIGTERM, "interrupted before it mounted")  # nothing of it is mounted
        began = last_reader = time.monotonic()
        said = False
        grace_stage = 0
        while True:
            procs.reap()
            live = procs.alive()
            if not live:
                return
            now = time.monotonic()
            if self.forced:
                self._kill(signal.SIGKILL, f"{self._signals[-1].name} while waiting for it")
                self._say(f"killed {self._who(live)}: what it had not saved is lost")
                procs.reap()
                return
            if self.relay is None or not self.relay.requests_running:
                if self._tell(set(live) | procs.track()):
                    last_reader = now
                elif now - last_reader > EOF_AFTER:
                    self._end_of_file("no server thread was left reading the relay")
            grace = self.cfg.grace
            if grace is not None and grace_stage < 2 and now - began > grace * (grace_stage + 1):
                sig = signal.SIGTERM if grace_stage == 0 else signal.SIGKILL
                grace_stage += 1
                self._kill(sig, f"--grace {grace:g}")
                self._say(f"--grace {grace:g}: sent {sig.name} to {self._who(live)}")
            if not said and now - began > ANNOUNCE_AFTER:
                said = True
                self._say(f"waiting for {self._who(live)} to exit after the unmount (it may be "
                          f"saving data); Ctrl-C stops waiting and kills it")
            self.wake.wait(0.05)
            self.wake.clear()

    def _who(self, pids: list[int]) -> str:
        shown = ", ".join(f"{name_of(pid)} (pid {pid})" for pid in pids[:3])
        return shown + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")

    def _tell(self, pids: set[int]) -> bool:
        """Give ENODEV to each server thread blocked reading the relay, and to threads
        waiting in poll/epoll at their next read of it; True when a thread was reading
        (so more may come)."""
        if self._hangup_refused or hangup.available() is not None:
            return False
        try:
            readers = [] if "end-of-file" in self.told else hangup.blocked_readers(
                pids, self.theirs_ino)
            for reader in readers:
                if hangup.give_enodev(reader):
                    self._told_enodev(reader, "blocked in read")
            waiters = [w for w in hangup.waiting_threads(pids) if w.tid not in self._walked]
            if waiters and not readers:
                self._walked.update(w.tid for w in waiters)
                told = hangup.enodev_at_reads(waiters, self.theirs_ino, lambda: self._end_of_file(
                    "a thread waits in poll/epoll: told at its next read"))
                for waiter in told:
                    self._told_enodev(waiter, "at its next read after poll/epoll")
        except OSError as exc:
            self._hangup_refused = True
            self.differences.append(f"ENODEV could not be given ({exc.strerror}): "
                                    f"end-of-file instead")
            self._end_of_file("ptrace refused")
            return False
        return bool(readers)

    def _told_enodev(self, thread: hangup.Reader, how: str) -> None:
        self.told["enodev"] = self.told.get("enodev", 0) + 1
        self._event("enodev_given", pid=thread.pid, tid=thread.tid, how=how)

    def _end_of_file(self, why: str) -> None:
        """The relay's sending side shut: a server thread that reads it now sees EOF."""
        if "end-of-file" in self.told or self.ours is None:
            return
        self.told["end-of-file"] = 1
        try:
            self.ours.shutdown(socket.SHUT_WR)
        except OSError:
            return
        self._event("end_of_file", why=why)

    def _kill(self, sig: int, why: str) -> None:
        assert self.procs is not None
        for pid in self.procs.signal(sig):
            self._event("signal_sent", pid=pid, signal=sig, signal_name=signal.Signals(sig).name,
                        why=why)
        if sig == signal.SIGKILL or self._killed is None:
            self._killed = sig
            self.ended_by = f"{signal.Signals(sig).name} from fusetrace ({why})"
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 5.0  # SIGKILL is not refused: only the reaping waits
            while self.procs.alive() and time.monotonic() < deadline:
                self.procs.reap()
                time.sleep(0.02)

    def _verdict(self, reason: str, noted: bool | None) -> tuple[int, str | None]:
        """Exit code and the one-line reason to print (None: print the summary);
        `noted` as `_note_stop` says."""
        relay, procs = self.relay, self.procs
        name = self.command.argv[0]
        if self._killed == signal.SIGKILL and reason != "set-up failed":
            return 128 + signal.SIGINT if self.forced else 128 + signal.SIGKILL, None
        if relay is not None and relay.broken:
            return 1, f"{relay.broken}; unmounted {self.target}"
        if self.trap is not None and self.trap.failed:
            return 1, f"{self.trap.failed}: the recording ended there; unmounted {self.target}"
        stopped = self.writer.stopped if self.writer is not None else None
        if stopped is not None:
            err, records, size, _when = stopped
            said = ("it says so at its end" if noted else
                    "not even a note saying so fitted")
            return 1, (f"recording stopped at record {records} (byte {size}) of "
                       f"{self.cfg.trace}: {os.strerror(err)}; the session went on "
                       f"unrecorded to its end: the trace is incomplete, {said}")
        code = procs.failure() if procs is not None else 0
        if relay is not None and not relay.init_answered.is_set() and reason != "set-up failed":
            status = described(code) if procs and procs.main_status is not None else "stopped"
            where = ("before it mounted" if self.device is None
                     else "before answering the kernel's INIT")
            hint = (" (it may not take a /dev/fd/N mountpoint: as root, --connect auto lets "
                    "it mount by itself)" if not self.server_mounts else "")
            return 2, f"error: {name} {status} {where}{hint}; fusetrace mounted nothing"
        if reason in ("server exited", "server closed the connection"):
            if code == 0:
                return 1, f"{name} closed its connection while mounted; unmounted {self.target}"
            return (128 - code if code < 0 else code), (
                f"{name} {described(code)} while mounted; unmounted {self.target}")
        if code:
            return (128 - code if code < 0 else code), (
                f"{name} {described(code)} after the unmount; "
                f"{self.writer.records if self.writer else 0} records in {self.cfg.trace}")
        return 0, None

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for sock in (self.ours, self.theirs):
            if sock is not None:
                sock.close()
        if self.devfd >= 0:
            os.close(self.devfd)
            self.devfd = -1
        if self.note is not None and (self.device is None or self.target is None
                                      or not mounted_device(self.target, self.device)):
            self.note.remove()


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def record(cfg: RecordConfig) -> int:
    """`fusetrace record`: exit 2 with one line for bad arguments, else the session's code."""
    try:
        native()  # before anything is mounted
        session = Session(cfg)
    except (ArgumentError, NotBuilt) as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
    return session.run()
