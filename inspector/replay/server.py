"""The server under test: started as for `fusetrace record`, but on a socket with nothing
mounted behind it, so no root and no /dev/fuse are needed.

The server gets its connection the way it did when recorded (the trace's `connected`
event): one that opened /dev/fuse and mounted by itself (`device-open`: libfuse 2, its own
FUSE code, a new-mount-API server falling back to mount(2)) or through the fusermount3
helper (`helper`: Go servers, `_FUSE_COMMFD`) runs with its command line as typed, its
open of /dev/fuse (its own or the helper's) gets the socket and its mount(2) is told it
worked, as root (as under `record`). Others get `/dev/fd/N`, one end of a SOCK_SEQPACKET
socketpair, in place of the mountpoint argument (found as for `record`: the same heuristic
and `--mountpoint`, `inspector.exchange.args`). Either way its umount2(2) of its
mountpoint (or of the /dev/fd/N it was given) is answered 0, as `record` answers it once
the mount is gone, and a server that mounted by itself and then opens a path inside its
mountpoint (go-fuse does, at start) gets an empty file, not the directory underneath.
The recorder's seccomp trap (`inspector.exchange.trap`) is installed the same way, with
the kernel's side of the ioctls emulated (`emulate.EmulatedKernel` is its performer).
Its output goes to a file, shown when it fails.

A server that exits (or closes its connection) is seen at once, whatever it was doing:
the replay waits on its process (a pidfd) beside its socket, so one that never starts is
named with its exit status within moments, never taken for a server that hangs.

Ending, as the recorded session ended (`hang_up`, `wait_exit`): after an unmount every
server thread reading the connection gets ENODEV, as the kernel says it and as the
recorder passes it on (`exchange.hangup`: ptrace); a server that ended the session itself
is waited for. Processes are found by the server's end of the socket in /proc (a
daemonized server too). When that does not end it, or when the trace does not say how
the session ended, `stop`: SIGTERM, then end-of-file, then SIGKILL, a grace period apart,
and `exit_note` says so.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from typing import IO, Callable, Sequence

from ..exchange import hangup
from ..exchange.args import ArgumentError, ServerCommand
from ..exchange.channel import BUFFER_SIZE, server_socketpair
from ..exchange.flavour import Flavour, guess
from ..exchange.trap import IoctlTrap, ServerMount, ServerOpen, ServerUnmount
from ..syscalls import socket_holders
from .emulate import EmulatedKernel, IoctlLog
from .script import ReplayError, exit_text

#: `connected` routes of a server that mounted by itself: through its own open of /dev/fuse
#: and mount(2), or through the fusermount3 helper
_SERVER_MOUNTS = frozenset({"device-open", "helper"})
GRACE = 3.0  # seconds the server gets to exit after its connection ends, then after SIGTERM


class Closed(Exception):
    """The server closed its end of the socket (it exited, crashed or gave up)."""


class ServerUnderTest:
    def __init__(self, argv: Sequence[str], log: IoctlLog, passthrough: Callable[[], int],
                 mountpoint: str | None = None, route: str | None = None) -> None:
        """`route`: how the recorded server got its connection (the trace's `connected`
        event); as root, a server that opened /dev/fuse and mounted by itself or through
        the helper then is let do so again (on the emulation), whatever its binary looks
        like (ntfs-3g's own FUSE code takes no /dev/fd/N, a helper-route server may not)."""
        argv = list(argv[1:] if argv[:1] == ["--"] else argv)
        if not argv:
            raise ReplayError("no server command given: fusetrace replay TRACE -- SERVER [ARGS...] MOUNTPOINT")
        self.flavour = guess(argv)
        if route in _SERVER_MOUNTS and os.geteuid() == 0:
            self.flavour = Flavour.DEVICE_OPEN
        try:
            self.command = ServerCommand.parse(argv, mountpoint)
        except ArgumentError as exc:
            raise ReplayError(str(exc)) from None
        if self.flavour is Flavour.DEVICE_OPEN and os.geteuid() != 0:
            raise ReplayError(f"{argv[0]} gets its connection by itself (it opens /dev/fuse and "
                              f"mounts, or runs fusermount3): replaying it needs root, as "
                              f"recording it does")
        reason = IoctlTrap.available()
        if reason:
            raise ReplayError(f"the seccomp trap a replay runs the server under is not available: {reason}")
        self.log = log
        self.passthrough = passthrough
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.trap: IoctlTrap | None = None
        self.pidfd = -1  # the server process's, polled beside the socket
        self.sock: socket.socket | None = None
        self.output: IO[bytes] = tempfile.TemporaryFile(prefix="fusetrace-replay-server-")
        self.buf = bytearray(BUFFER_SIZE)
        self.poller = select.poll()
        self.inode = -1
        self.exit_note: str | None = None  # what it took to stop the server, if not the EOF

    # --- start --------------------------------------------------------------------------

    def start(self) -> None:
        ours, theirs, _ = server_socketpair()
        self.sock = ours
        self.poller.register(ours, select.POLLIN)
        child_fd = theirs.fileno()
        device_open = self.flavour is Flavour.DEVICE_OPEN
        argv = (self.command.argv if device_open
                else self.command.with_mountpoint(f"/dev/fd/{child_fd}"))
        self.trap = IoctlTrap(child_fd, -1, self.log,
                              on_mount=_pretend_mounted if device_open else None,
                              on_unmount=self._unmounted, native=False,
                              performer=EmulatedKernel(self.passthrough),
                              on_open=self._opened_inside if device_open else None)
        try:
            self.proc = subprocess.Popen(argv, pass_fds=[child_fd], preexec_fn=self.trap.child_setup,
                                         stdin=subprocess.DEVNULL, stdout=self.output,
                                         stderr=self.output)
        except OSError as exc:
            theirs.close()
            where = f" ({exc.filename})" if exc.filename and exc.filename != argv[0] else ""
            raise ReplayError(f"cannot start {argv[0]}: {exc.strerror}{where}") from None
        self.inode = os.fstat(child_fd).st_ino
        theirs.close()
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.poller.register(self.pidfd, select.POLLIN)
        try:
            self.trap.start(self.proc)
        except RuntimeError as exc:
            raise ReplayError(str(exc)) from None

    def _opened_inside(self, request: ServerOpen) -> int | None:
        """The trap's `on_open`: a server's own open of a path inside the mountpoint it
        believes mounted (go-fuse opens a file there at start, to have the kernel send it
        a POLL it can refuse) gets an empty file (/dev/null); the requests the kernel made
        of it are in the trace and replayed as recorded."""
        mountpoint = self.command.mountpoint
        if mountpoint is None:
            return None
        inside = os.path.realpath(mountpoint) + os.sep
        if not os.path.realpath(request.path).startswith(inside):
            return None
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def _unmounted(self, request: ServerUnmount) -> int | None:
        """The trap's `on_unmount`: the server unmounting its mountpoint (or the /dev/fd/N
        it was given) is answered 0, as `record` answers it after the unmount; any other
        umount2 is not ours (None)."""
        target = request.target
        dev_fd = re.fullmatch(r"/dev/fd/(\d+)", target)
        if dev_fd and self.trap is not None and self.trap.is_relay(request.pid, int(dev_fd.group(1))):
            return 0
        mountpoint = self.command.mountpoint
        if mountpoint is not None and os.path.realpath(target) == os.path.realpath(mountpoint):
            return 0
        return None

    # --- talk ---------------------------------------------------------------------------

    def send(self, raw: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.send(raw)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise Closed() from None
            if exc.errno == errno.EMSGSIZE:
                raise ReplayError(f"a {len(raw)}-byte request does not fit the socket buffer "
                                  f"(run as root to raise it)") from None
            raise

    def receive(self, deadline: float) -> bytes | None:
        """The next message from the server; None when the deadline passed first. Raises
        Closed once nothing holds the server's end any more (every process of it exited)."""
        assert self.sock is not None
        try:  # a pipelined replay often finds the reply there already: no poll for it
            n = self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC | socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = self._wait_and_receive(deadline)
            if n is None:
                return None
        except ConnectionResetError:
            raise Closed() from None
        if n == 0:
            raise Closed()
        if n > len(self.buf):
            raise ReplayError(f"a {n}-byte message from the server exceeds the {len(self.buf)}-byte buffer")
        return bytes(self.buf[:n])

    def _wait_and_receive(self, deadline: float) -> int | None:
        assert self.sock is not None
        while True:
            events = self.poller.poll(max(deadline - time.monotonic(), 0) * 1000)
            if not events:
                return None
            if any(fd == self.sock.fileno() for fd, _ in events):
                break
            self._process_gone()
        try:
            return self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
        except ConnectionResetError:
            raise Closed() from None

    def _process_gone(self) -> None:
        """The process started has exited: Closed when nothing of the server holds its end
        of the socket any more (a daemon that took it over keeps the session going)."""
        self.poller.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        assert self.proc is not None
        self.proc.wait()
        if not socket_holders(self.inode) and self.trap is not None:
            self.trap.release_relay()  # kept for an open of /dev/fuse that never came

    # --- end ------------------------------------------------------------------------

    def status(self) -> str | None:
        """How the server process ended, once it has ("exited with status 1", "killed by
        SIGSEGV"); None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return exit_text(self.proc.returncode)

    def end_input(self) -> None:
        """No more requests: the server reads the end of its connection."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def stop(self, on_message: Callable[[bytes], None] | None = None) -> None:
        """End the server as an unmount ends a recorded session: SIGTERM, then the end of
        its connection, then SIGKILL, a grace period apart. Messages still coming are
        handed to `on_message`."""
        if self.sock is not None:
            self._signal(signal.SIGTERM)
            if not self._wait_closed(GRACE, on_message):
                self.exit_note = f"still running {GRACE:g} s after SIGTERM: its connection was closed"
                self.end_input()
                if not self._wait_closed(GRACE, on_message):
                    self.exit_note = f"still running {2 * GRACE:g} s after SIGTERM: SIGKILL"
                    self._signal(signal.SIGKILL)
                    self._wait_closed(GRACE, on_message)
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.trap is not None:
            self.trap.stop()

    def hang_up(self, on_message: Callable[[bytes], None], seconds: float) -> None:
        """End the session as an unmount does: each thread blocked reading the connection,
        and each waiting in poll/epoll at its next read, gets ENODEV; then `stop` if the
        server is still there after `seconds`."""
        why = hangup.available()
        deadline = time.monotonic() + seconds
        walked: set[int] = set()
        while why is None and self.sock is not None and time.monotonic() < deadline:
            pids = self._holders()
            try:
                readers = hangup.blocked_readers(pids, self.inode)
                for reader in readers:
                    hangup.give_enodev(reader)
                waiters = [w for w in hangup.waiting_threads(pids) if w.tid not in walked]
                if waiters and not readers:
                    walked.update(w.tid for w in waiters)
                    hangup.enodev_at_reads(waiters, self.inode, self.end_input)
            except OSError as exc:
                why = f"ptrace: {exc.strerror}"
                break
            if self._wait_closed(0.05, on_message):
                self._closed()
                return
        if why is not None:
            self.exit_note = f"ENODEV could not be given ({why}): end-of-file instead"
            self.end_input()
            if self._wait_closed(GRACE, on_message):
                self._closed()
                return
        else:
            self.exit_note = f"still running {seconds:g} s after ENODEV: SIGTERM"
        self.stop(on_message)

    def wait_exit(self, on_message: Callable[[bytes], None], seconds: float) -> None:
        """The recorded server ended the session by itself: wait for it to, then `stop`."""
        if self._wait_closed(seconds, on_message):
            self._closed()
            return
        self.exit_note = (f"still running {seconds:g} s after the last request (the recorded "
                          f"server ended the session itself): SIGTERM")
        self.stop(on_message)

    def _closed(self) -> None:
        """Every holder closed the connection: collect the exit."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.stop()

    def kill(self) -> None:
        """A hung or broken server: no grace."""
        self._signal(signal.SIGKILL)
        self.stop()

    def close(self) -> None:
        self.output.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def server_output(self, limit: int = 4000) -> str:
        """The end of what the server wrote to stdout and stderr."""
        try:
            self.output.seek(0, os.SEEK_END)
            size = self.output.tell()
            self.output.seek(max(size - limit, 0))
            return self.output.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _wait_closed(self, seconds: float, on_message: Callable[[bytes], None] | None) -> bool:
        """Read what is left until every holder closed the server's end."""
        deadline = time.monotonic() + seconds
        try:
            while (msg := self.receive(deadline)) is not None:
                if on_message is not None:
                    on_message(msg)
        except Closed:
            return True
        except ReplayError:
            return False
        return False

    def _signal(self, sig: int) -> None:
        for pid in self._holders():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue

    def _holders(self) -> set[int]:
        """Processes holding the server's end of the socket, and the server while it runs."""
        pids = socket_holders(self.inode)
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return pids


def _pretend_mounted(request: ServerMount) -> int:
    """A server's own mount(2) of its connection: nothing is mounted in a replay, and the
    server is told it worked."""
    return 0
