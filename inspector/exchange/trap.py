"""Catch the server's /dev/fuse ioctls (and its splices onto the relay) with seccomp user
notification, and have a performer answer them: for real on the device (`record`), or
emulated as the kernel would answer (`replay`).

The server talks to a socket it believes is /dev/fuse, so its passthrough ioctls would fail
there (ENOTTY) and it would quietly drop passthrough. Before the server's exec, a seccomp
filter is installed in the child that turns every ioctl with the FUSE magic (229) into a
notification on a listener fd handed to fusetrace. The supervisor thread then, for each:

- checks the notification is still valid and that the fd is our relay socket (anything
  else continues untouched, as if nothing had happened);
- reads the argument from the calling thread's memory (/proc/TID/mem);
- for ioctls that pass a file descriptor (BACKING_OPEN, Android PASSTHROUGH_OPEN V0/V1/V2),
  takes that fd from the server with pidfd_getfd and rewrites the argument with our copy;
- hands it to its `Performer` (`DevicePerformer`: the ioctl on the real /dev/fuse), records
  it (command, argument bytes as the server wrote them, result or errno, thread, the fd and
  the path behind it), and answers the server with the performer's result or errno.

The calls that pass a backing file (BACKING_OPEN, PASSTHROUGH_OPEN) are made with the
calling thread's credentials (`creds`): the kernel checks CAP_SYS_ADMIN and keeps the
caller's credentials for passthrough I/O. When the recorder's own machinery fails
(pidfd_getfd refused by Yama or an LSM, credentials it cannot take), the record says so in
`recorder_error` and the errno is the recorder's, never presented as the kernel's. When
the trap thread cannot take its own credentials back after such a call (`creds.RestoreError`)
it stops at once: the server gets EIO for that call and ENOSYS for every trapped call after
(the listener is closed), a backing id the call opened is closed by `stop()` from another
thread, and `failed` says why (record then exits 1).

FUSE_DEV_IOC_CLONE naming the relay socket (libfuse's `clone_fd`: a fresh /dev/fuse fd,
cloned from the session's) is emulated: the new fd is replaced (SECCOMP_ADDFD_FLAG_SETFD)
by another descriptor of the relay socket, so the server's per-thread channels all reach
the relay and nothing it sees fails (cloning the real device would let the clone steal
requests from the relay). FUSE_DEV_IOC_SYNC_INIT gets ENOTTY (what kernels without it
say). Both are recorded.

Servers that get the device themselves are caught with `on_mount`: the filter also traps
opens for O_RDWR (the path is checked here: only /dev/fuse is taken over) and mount(2), in
the server and everything it runs (the `fusermount3` helper included). Their open of
/dev/fuse returns a copy of the relay socket (SECCOMP_IOCTL_NOTIF_ADDFD), and their
mount(2) of it goes to the recorder, which mounts the real device at the same place with
the same options. umount2(2) is trapped always (`on_unmount`): a server ending its session
unmounts its mountpoint the way it would directly, and one told of an unmount that already
happened is answered as the kernel's POLLERR would have spared it the call. With
`on_fsmount`, the new mount API (fsopen/fsconfig/fsmount/move_mount) is taken over the
same way (`fsmount`). With `on_open` (a replay, where nothing is mounted), every other
open the server makes is handed over too, its path made absolute, to be answered with a
descriptor of the caller's or let run.

With the device performer the common calls are handled in C (`_trapfast.c`, with the GIL
released): BACKING_OPEN and BACKING_CLOSE on the relay from a caller with the recorder's
own credentials, and opens for O_RDWR of anything but /dev/fuse. Python keeps the rest and every call the C
loop hands back before it has done anything. Without the C part everything is done here,
slower.

Caveats: x86-64 and arm64 only; the supervisor needs CAP_SYS_PTRACE-equivalent access to
the server (root here) for /proc/TID/mem and pidfd_getfd; an ioctl blocked in the
supervisor blocks only the calling server thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import platform
import re
import select
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from dissectors.ioctls import FD_ARGS, DevIoctl, FuseIoctlU32
from dissectors.offsets import offset
from traces import TraceWriter

from .. import syscalls
from . import creds

try:
    from . import _trapfast
except ImportError:  # not built: everything goes through Python
    _trapfast = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .fsmount import MountApi, MountApiHandler

log = logging.getLogger(__name__)
#: What a recorder without the C trap says, once.
NOT_BUILT = ("the ioctl trap runs in Python (each passthrough open costs ~0.3 ms more): "
             "build its C part with `.venv/bin/pip install -e .` (gcc, python3-dev)")

_libc = ctypes.CDLL(None, use_errno=True)

# <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PR_SET_NO_NEW_PRIVS = 38
_NOTIF = struct.Struct("<QIIiIQ6Q")  # struct seccomp_notif: id, pid, flags, seccomp_data
_RESP = struct.Struct("<QqiI")  # struct seccomp_notif_resp: id, val, error, flags
SECCOMP_IOCTL_NOTIF_RECV = (3 << 30) | (_NOTIF.size << 16) | (ord("!") << 8) | 0
SECCOMP_IOCTL_NOTIF_SEND = (3 << 30) | (_RESP.size << 16) | (ord("!") << 8) | 1
SECCOMP_IOCTL_NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2
_ADDFD = struct.Struct("<QIIII")  # struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags
SECCOMP_IOCTL_NOTIF_ADDFD = (1 << 30) | (_ADDFD.size << 16) | (ord("!") << 8) | 3
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0  # put the fd at the number given (like dup2)
SECCOMP_ADDFD_FLAG_SEND = 1 << 1  # add the fd and answer the call with its number, atomically

@dataclass(frozen=True)
class Arch:
    """Syscall numbers the filter needs, per architecture."""

    audit: int  # AUDIT_ARCH_*
    ioctl: int
    seccomp: int
    openat: int
    mount: int
    umount2: int
    splice: int
    open: int | None  # legacy open(2); arm64 has none
    #: The calls that change a thread's credentials: seeing one tells the C loop that the
    #: credentials it found equal to the recorder's may no longer be.
    cred_changes: tuple[int, ...] = ()
    #: The new mount API (`fsmount`): the same numbers on every architecture.
    fsopen: int = syscalls.NR_FSOPEN
    fsconfig: int = syscalls.NR_FSCONFIG
    fsmount: int = syscalls.NR_FSMOUNT
    move_mount: int = syscalls.NR_MOVE_MOUNT


_ARCHES = {
    # cred_changes: setuid setgid setreuid setregid setgroups setresuid setresgid setfsuid
    # setfsgid capset (not execve: the server's own exec would wait for a supervisor that
    # starts only once Popen has returned)
    "x86_64": Arch(0xC000003E, ioctl=16, seccomp=317, openat=257, mount=165, umount2=166,
                   splice=275, open=2,
                   cred_changes=(105, 106, 113, 114, 116, 117, 119, 122, 123, 126)),
    "aarch64": Arch(0xC00000B7, ioctl=29, seccomp=277, openat=56, mount=40, umount2=39,
                    splice=76, open=None,
                    cred_changes=(146, 144, 145, 143, 159, 147, 149, 151, 152, 91)),
}
NR_PIDFD_GETFD = 438  # the same on every architecture (added in 5.6)
FUSE_IOCTL_TYPE = 229 << 8
O_RDWR = os.O_RDWR
#: Flags that don't change what "an open of /dev/fuse" is: O_CLOEXEC, O_LARGEFILE.
_OPEN_FLAGS_MASK = ~(0o2000000 | 0o100000) & 0xFFFFFFFF
_AT_FDCWD = -100

# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _AND_K, _RET_K = 0x20, 0x15, 0x54, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


@dataclass(frozen=True)
class Rule:
    """Notify on syscall `nr` when (low 32 bits of args[arg]) & mask == value; always when
    `arg` is None."""

    nr: int
    arg: int | None = None
    mask: int = 0xFFFFFFFF
    value: int = 0


def filter_program(audit_arch: int, rules: list[Rule]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: the rules' calls → USER_NOTIF, everything else (other ABIs too) → ALLOW.

    Each rule is a block that falls through to the next when it does not match:
    `ld nr; jeq nr ? check : next; [ld arg; and mask; jeq value ? notify : next;] ret notify`.
    """
    body: list[tuple[int, int, int, int]] = []
    for rule in rules:
        if rule.arg is None:
            body += [(_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, 1, rule.nr),
                     (_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF)]
        else:
            body += [(_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, 4, rule.nr),
                     (_LD_W_ABS, 0, 0, 16 + 8 * rule.arg), (_AND_K, 0, 0, rule.mask),
                     (_JEQ_K, 0, 1, rule.value), (_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF)]
    return [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, len(body), audit_arch), *body,
            (_RET_K, 0, 0, SECCOMP_RET_ALLOW)]


def rules_for(arch: Arch, device_open: bool, cred_changes: bool = False,
              mount_api: bool = False, every_open: bool = False) -> list[Rule]:
    """FUSE ioctls, splice(2) and umount2(2) always; with `device_open`, also opens of a
    file for O_RDWR (how servers open /dev/fuse; the path is checked in user space) and
    mount(2); with `every_open`, every open; with `cred_changes`, the calls that change
    credentials (let through: the C loop only notes them); with `mount_api`, fsopen,
    fsconfig, fsmount and move_mount."""
    rules = [Rule(arch.ioctl, arg=1, mask=0xFF00, value=FUSE_IOCTL_TYPE), Rule(arch.splice),
             Rule(arch.umount2)]
    if cred_changes:
        rules += [Rule(nr) for nr in arch.cred_changes]
    if every_open:
        rules += [Rule(nr) for nr in (arch.openat, arch.open) if nr is not None]
    elif device_open:
        rules.append(Rule(arch.openat, arg=2, mask=_OPEN_FLAGS_MASK, value=O_RDWR))
        if arch.open is not None:
            rules.append(Rule(arch.open, arg=1, mask=_OPEN_FLAGS_MASK, value=O_RDWR))
    if device_open:
        rules.append(Rule(arch.mount))
    if mount_api:
        rules += [Rule(arch.fsopen), Rule(arch.fsconfig), Rule(arch.fsmount),
                  Rule(arch.move_mount)]
    return rules


def _syscall_check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate `target_fd` of the process behind `pidfd` into ours (close-on-exec)."""
    return _syscall_check(_libc.syscall(NR_PIDFD_GETFD, pidfd, target_fd, 0), "pidfd_getfd")


PIDFD_THREAD = os.O_EXCL  # <linux/pidfd.h>: a pidfd for one thread (Linux 6.9)


def take_fd(tid: int, fd: int) -> int:
    """A copy of descriptor `fd` of the thread `tid`'s process: through a pidfd of the
    thread itself, which works after the process's main thread has ended (a pidfd of the
    pid then says ESRCH)."""
    pidfd = os.pidfd_open(tid, PIDFD_THREAD)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


@dataclass(frozen=True)
class Notification:
    id: int
    tid: int  # the calling thread
    nr: int
    args: tuple[int, ...]

    @property
    def fd(self) -> int:
        return ctypes.c_int(self.args[0] & 0xFFFFFFFF).value

    @property
    def cmd(self) -> int:
        return self.args[1] & 0xFFFFFFFF

    @property
    def arg_address(self) -> int:
        return self.args[2]


@dataclass(frozen=True)
class ServerMount:
    """A mount(2) the server made on the relay: what the recorder must do for real."""

    source: str
    target: str  # absolute
    fstype: str
    flags: int
    data: str  # the server's options with its `fd=N` removed
    pid: int
    tid: int  # the caller, whose credentials the mount is made with
    program: str  # the caller's executable: the server, or a helper such as fusermount3


@dataclass(frozen=True)
class ServerUnmount:
    """An umount2(2) a server process made."""

    target: str  # absolute
    flags: int
    pid: int
    tid: int


@dataclass(frozen=True)
class ServerOpen:
    """An open(2) a server process made of a path other than /dev/fuse."""

    path: str  # absolute
    flags: int
    pid: int
    tid: int


#: The recorder's answer to a ServerMount: 0 or an errno.
MountHandler = Callable[[ServerMount], int]
#: The recorder's answer to a ServerUnmount: 0, an errno, or None (not ours: let it run).
UnmountHandler = Callable[[ServerUnmount], "int | None"]
#: The answer to a ServerOpen: a descriptor of ours the server gets instead (the trap
#: closes it once handed over), or None (let the open run).
OpenHandler = Callable[[ServerOpen], "int | None"]
_FD_OPTION = re.compile(r"(?:^|,)fd=(\d+)(?=,|$)")


def read_string(tid: int, address: int, limit: int = 4096) -> str | None:
    """A NUL-terminated string from a thread's memory, read page by page."""
    if not address:
        return None
    out = bytearray()
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        while len(out) < limit:
            chunk = os.pread(fd, 4096 - (address + len(out)) % 4096, address + len(out))
            if not chunk:
                break
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(bytes(out + chunk[:end]))
            out += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _drain(pipe: int, length: int) -> bytes:
    """Up to `length` bytes already in a pipe, without ever waiting for more."""
    chunks, got = [], 0
    poller = select.poll()
    poller.register(pipe, select.POLLIN)
    while got < length and poller.poll(0):
        chunk = os.read(pipe, length - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def tgid_of(tid: int) -> int:
    with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def fd_path(pid: int, fd: int) -> str | None:
    """What descriptor `fd` of process (or thread: the table is shared, and a thread's
    entry outlives its process's main thread) `pid` names, as /proc shows it."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


#: Which ioctls carry a file descriptor, and where in their argument it sits.
_FD_AT = {cmd: offset(cls, name) for cmd, (cls, name) in FD_ARGS.items()}


@dataclass(frozen=True)
class TrappedIoctl:
    """A /dev/fuse ioctl a server thread made on the relay, as a performer gets it."""

    cmd: int
    arg: bytes  # as the server wrote it
    pid: int
    tid: int  # the caller, whose credentials count
    backing_fd: int | None  # the descriptor the argument passes (in the server), if any
    fd_at: int | None  # where in `arg` that descriptor sits


class Performer(Protocol):
    """Who answers the server's ioctls: the real device, or an emulation of the kernel."""

    def perform(self, call: TrappedIoctl) -> Outcome:
        ...


class TrapLog(Protocol):
    """Where the trap reports: a TraceWriter, or anything taking the same two calls."""

    def ioctl(self, **meta: Any) -> None:
        ...

    def event(self, name: str, **data: Any) -> None:
        ...


class IoctlTrap:
    """Seccomp supervisor for one server (and every process and thread it starts)."""

    @staticmethod
    def available() -> str | None:
        """None, or why seccomp user notification cannot be used here."""
        if platform.machine() not in _ARCHES:
            return f"no seccomp filter for {platform.machine()}"
        if not hasattr(os, "pidfd_open"):
            return "this Python has no os.pidfd_open"
        try:
            with open("/proc/sys/kernel/seccomp/actions_avail", encoding="ascii") as f:
                if "user_notif" not in f.read().split():
                    return "the kernel offers no seccomp user notification"
        except OSError:
            return "the kernel has no seccomp"
        return None

    def __init__(self, relay_fd_in_child: int, device_fd: int, writer: TraceWriter | TrapLog,
                 on_mount: MountHandler | None = None,
                 on_unmount: UnmountHandler | None = None, native: bool = True,
                 performer: Performer | None = None,
                 on_fsmount: MountApiHandler | None = None,
                 on_open: OpenHandler | None = None) -> None:
        """`relay_fd_in_child` is the server's socket end, open here under the same number
        (subprocess's pass_fds keeps numbers); its inode is how the relay is recognised.
        `device_fd` is the real /dev/fuse (-1 until there is one: `device_fd` may be set
        later, once the recorder has mounted).

        With `on_mount`, servers that open /dev/fuse and mount(2) it themselves (directly
        or through fusermount3) are caught too: their open of /dev/fuse returns a copy of
        the relay socket, and their mount(2) of it is handed to `on_mount`. With
        `on_fsmount` too, their new mount API calls are taken over (`fsmount`).

        `performer` answers the ioctls (default: `DevicePerformer` on `device_fd`, whose
        common calls the C loop makes itself); `native=False` keeps every call in Python.
        With `on_open` (which needs `native=False`), every other open the server makes is
        handed to it: a replay answers the server's opens inside a mountpoint that is not
        there."""
        self.relay_fd_in_child = relay_fd_in_child
        self.device_fd = device_fd
        self.writer = writer
        self.relay_inode = os.fstat(relay_fd_in_child).st_ino
        self.on_mount = on_mount
        self.on_unmount = on_unmount
        self.on_open = on_open
        self._trace_error: str | None = None  # why ioctls stopped being recorded
        self.failed: str | None = None  # why this trap stopped working (creds.RestoreError)
        self._orphans: list[int] = []  # backing ids opened by a call the trap then stopped at
        self._inject: int | None = os.dup(relay_fd_in_child) if on_mount else None
        self._opened_here = 0  # backing ids opened minus closed through Python
        self._asked_native = native
        self.fast: Any = None  # the C loop (_trapfast.Trap), once started
        self.spliced = 0  # replies the server spliced onto the relay, sent whole instead
        self._parent_end, self._child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._listener: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._arch = _ARCHES[platform.machine()]
        self._nr_ioctl, self._nr_seccomp = self._arch.ioctl, self._arch.seccomp
        self.performer = performer if performer is not None else DevicePerformer(self)
        self._native = (native and _trapfast is not None and on_open is None
                        and isinstance(self.performer, DevicePerformer))
        self.mount_api: MountApi | None = None
        if on_fsmount is not None:
            from . import fsmount  # it builds on this module
            self.mount_api = fsmount.MountApi(self, on_fsmount)
        program = filter_program(self._arch.audit, rules_for(
            self._arch, on_mount is not None, cred_changes=self._native,
            mount_api=self.mount_api is not None, every_open=on_open is not None))
        self._filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
        self._prog = _SockFprog(len(program), self._filters)

    # --- in the child, between fork and exec ------------------------------------------

    def child_setup(self) -> None:
        """preexec_fn: install the filter, send the listener fd to the parent."""
        if os.getuid() != 0:
            _syscall_check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
        listener = _syscall_check(
            _libc.syscall(self._nr_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER, ctypes.byref(self._prog)),
            "seccomp")
        socket.send_fds(self._child_end, [b"L"], [listener])
        os.close(listener)

    # --- in fusetrace ----------------------------------------------------------------

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        """Receive the listener from the started server and supervise it."""
        self._child_end.close()
        self._parent_end.settimeout(5)
        try:
            _, fds, _, _ = socket.recv_fds(self._parent_end, 16, 1)
        except (socket.timeout, OSError) as exc:
            raise RuntimeError(f"the server never handed over its seccomp listener: {exc}") from exc
        finally:
            self._parent_end.close()
        if not fds:
            raise RuntimeError("the server never handed over its seccomp listener")
        self._listener = fds[0]
        self.fast = self._fast_loop()
        self._thread = threading.Thread(target=self._serve, name="ioctl-trap", daemon=True)
        self._thread.start()

    def _fast_loop(self) -> Any:
        """The C loop over our listener, or None (and why, once) when it cannot be used."""
        if not self._native:
            if self._asked_native:
                log.warning(NOT_BUILT)
            return None
        assert isinstance(self.writer, TraceWriter)
        return _trapfast.Trap(listener=self._listener, relay_inode=self.relay_inode,
                              appender=self.writer.appender, nr_ioctl=self._arch.ioctl,
                              nr_openat=self._arch.openat, nr_open=self._arch.open or -1,
                              backing_open=DevIoctl.BACKING_OPEN,
                              backing_close=DevIoctl.BACKING_CLOSE,
                              cred_changes=self._arch.cred_changes)

    @property
    def open_backing_ids(self) -> int:
        """Backing ids the server opened and has not closed (as far as seen)."""
        return self._opened_here + (self.fast.open_backing_ids if self.fast else 0)

    @property
    def trace_error(self) -> str | None:
        """Why ioctls stopped being recorded, or None."""
        if self._trace_error is None and self.fast is not None and self.fast.trace_errno:
            self._trace_error = f"writing the trace failed: {os.strerror(self.fast.trace_errno)}"
        return self._trace_error

    def stop(self) -> None:
        self._stopping.set()
        self.release_relay()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_orphans()
        if self._listener is not None:
            os.close(self._listener)
            self._listener = None
        if self.mount_api is not None:
            self.mount_api.close()

    def _next(self, poller: select.poll) -> bytes | None | bool:
        """The next notification for Python (its bytes), None after a while without one,
        False once every process under the filter is gone."""
        if self.fast is not None:
            got: bytes | None | bool = self.fast.next(self.device_fd, 200)
            return got
        events = poller.poll(200)
        if not events:
            return None
        if events[0][1] & (select.POLLHUP | select.POLLERR) and not events[0][1] & select.POLLIN:
            return False
        buf = bytearray(_NOTIF.size)  # NOTIF_RECV wants a zeroed buffer
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_RECV, buf)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.ENOENT):
                return None  # the caller died or was interrupted before we got it
            raise
        return bytes(buf)

    def _serve(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        while not self._stopping.is_set():
            try:
                got = self._next(poller)
            except OSError as exc:
                log.error("seccomp listener: %s", exc)
                return
            if got is False:
                return  # every process under the filter is gone
            if not got:
                continue
            nid, tid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(got)
            note = Notification(nid, tid, nr, tuple(args))
            try:
                val, err, cont = self._handle(note)
            except creds.RestoreError as exc:  # this thread is no longer ours to use
                self.fail(str(exc))
                val, err, cont = -1, errno.EIO, False
            except Exception:  # never leave a server thread blocked on our bug
                log.exception("handling syscall %d", note.nr)
                val, err, cont = -1, errno.EIO, False
            if cont is not None:  # None: already answered (ADDFD with FLAG_SEND)
                self._respond(note, val, err, cont)
            if self.failed is not None:
                os.close(self._listener)  # later trapped calls get ENOSYS
                self._listener = None
                return

    def fail(self, why: str) -> None:
        """The trap thread cannot go on (its credentials could not be taken back): later
        trapped calls get ENOSYS, and the trace says why."""
        self.failed = why
        log.error("%s; the recording stops", why)
        self._record(self.writer.event, "proxy_error", recorder_error=why)

    def orphan(self, backing_id: int) -> None:
        """A backing id opened by a call after which the trap stopped: closed at `stop`."""
        self._orphans.append(backing_id)

    def _close_orphans(self) -> None:
        """Close backing ids opened by a call after which the trap thread stopped (from
        this thread, whose credentials are the recorder's)."""
        while self._orphans:
            backing_id = self._orphans.pop()
            try:
                fcntl.ioctl(self.device_fd, DevIoctl.BACKING_CLOSE,
                            bytearray(bytes(FuseIoctlU32(value=backing_id))))
                outcome = "closed"
            except OSError as exc:
                outcome = f"closing it failed: {exc.strerror}"
            self._record(self.writer.event, "proxy_error",
                         reason=f"backing id {backing_id}, opened by a call after which the "
                                f"trap stopped: {outcome}")

    def _respond(self, note: Notification, val: int, err: int, cont: bool) -> None:
        flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
        resp = _RESP.pack(note.id, 0 if cont else val, 0 if cont else -err, flags)
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp))
        except OSError as exc:  # ENOENT: the thread was interrupted meanwhile
            log.debug("answering ioctl %#x of %d: %s", note.cmd, note.tid, exc)

    def still_valid(self, note: Notification) -> bool:
        try:
            fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_ID_VALID,
                        bytearray(struct.pack("<Q", note.id)))
            return True
        except OSError:
            return False

    def is_relay(self, tid: int, fd: int) -> bool:
        """Whether descriptor `fd` of thread (or process) `tid` is the relay socket."""
        return fd_path(tid, fd) == f"socket:[{self.relay_inode}]"

    @property
    def arch(self) -> Arch:
        """The syscall numbers of this machine."""
        return self._arch

    def answer_with_fd(self, note: Notification, fd: int, cloexec: bool) -> int:
        """Answer the trapped call with a copy of our `fd` in the caller's process (its
        number there is the call's result); OSError when the kernel refuses."""
        addfd = _ADDFD.pack(note.id, SECCOMP_ADDFD_FLAG_SEND, fd, 0,
                            os.O_CLOEXEC if cloexec else 0)
        return fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(addfd))

    def note_event(self, name: str, **data: Any) -> None:
        """Record a session event from the trap's thread (nothing once the trace failed)."""
        self._record(self.writer.event, name, **data)

    def release_relay(self) -> None:
        """Give up the copy of the server's socket end kept for its open of /dev/fuse: once
        handed out, or once the server is gone without opening it (while we hold it, the
        other end would never see the server's side close)."""
        fd, self._inject = self._inject, None
        if fd is not None:
            os.close(fd)

    def _handle(self, note: Notification) -> tuple[int, int, bool | None]:
        """(return value, errno, continue-untouched) for one trapped call; None for
        "already answered"."""
        if note.nr == self._arch.splice:
            return self._handle_splice(note)
        if note.nr == self._arch.mount:
            return self._handle_mount(note)
        if note.nr == self._arch.umount2:
            return self._handle_umount(note)
        if note.nr in (self._arch.openat, self._arch.open):
            return self._handle_open(note)
        if self.mount_api is not None and note.nr in self.mount_api.calls:
            return self.mount_api.handle(note)
        if note.nr != self._arch.ioctl:
            return 0, 0, True  # a change of credentials (the C loop's to note): let through
        return self._handle_ioctl(note)

    def _handle_open(self, note: Notification) -> tuple[int, int, bool | None]:
        """An open of /dev/fuse gets a copy of the relay socket instead; any other is
        `on_open`'s to answer, if there is one."""
        at = note.nr == self._arch.openat
        path_arg = note.args[1] if at else note.args[0]
        path = read_string(note.tid, path_arg)
        flags = note.args[2 if at else 1] & 0xFFFFFFFF
        if path != "/dev/fuse" and self.on_open is not None and path:
            return self._handle_other_open(note, path, flags, note.args[0] if at else None)
        if path != "/dev/fuse" or self._inject is None or not self.still_valid(note):
            return 0, 0, True
        try:
            newfd = self.answer_with_fd(note, self._inject, bool(flags & os.O_CLOEXEC))
        except OSError as exc:
            log.warning("handing the relay to the server's open of /dev/fuse: %s", exc)
            return -1, exc.errno or errno.EIO, False
        pid = tgid_of(note.tid)
        self._record(self.writer.event, "device_open", pid=pid, tid=note.tid, fd=newfd,
                          note="the server opened /dev/fuse itself and got the relay socket")
        return newfd, 0, None  # answered by ADDFD_FLAG_SEND

    def _handle_other_open(self, note: Notification, path: str, flags: int,
                           dirfd: int | None) -> tuple[int, int, bool | None]:
        assert self.on_open is not None
        pid = tgid_of(note.tid)
        if not path.startswith("/"):
            base = ctypes.c_int(dirfd & 0xFFFFFFFF).value if dirfd is not None else _AT_FDCWD
            where = (os.readlink(f"/proc/{note.tid}/cwd") if base == _AT_FDCWD
                     else fd_path(note.tid, base) or "")
            path = os.path.join(where, path)
        ours = self.on_open(ServerOpen(path, flags, pid, note.tid))
        if ours is None:
            return 0, 0, True
        try:
            if not self.still_valid(note):
                return 0, 0, True
            try:
                newfd = self.answer_with_fd(note, ours, bool(flags & os.O_CLOEXEC))
            except OSError as exc:
                return -1, exc.errno or errno.EIO, False
        finally:
            os.close(ours)
        self._record(self.writer.event, "open_answered", pid=pid, tid=note.tid, path=path,
                     fd=newfd)
        return newfd, 0, None  # answered by ADDFD_FLAG_SEND

    def _handle_splice(self, note: Notification) -> tuple[int, int, bool | None]:
        """A splice onto the relay becomes one message with the same bytes.

        libfuse replies with vmsplice(header) + splice(file → pipe) + splice(pipe → fd); on
        a SEQPACKET socket the last splice would arrive cut into several messages. Here the
        pipe's bytes are read and sent on the server's own socket end in one send.
        """
        fd_in, fd_out, length = note.args[0] & 0xFFFFFFFF, note.args[2] & 0xFFFFFFFF, note.args[4]
        if not self.is_relay(note.tid, fd_out) or not self.still_valid(note):
            return 0, 0, True  # splices elsewhere (and reads from the socket) run untouched
        pipe = take_fd(note.tid, fd_in)
        try:
            sock = take_fd(note.tid, fd_out)
        except OSError:
            os.close(pipe)
            raise
        try:
            data = _drain(pipe, length)
            os.write(sock, data)
        except OSError as exc:
            return -1, exc.errno or errno.EIO, False
        finally:
            os.close(pipe)
            os.close(sock)
        self.spliced += 1
        return len(data), 0, False

    def _handle_mount(self, note: Notification) -> tuple[int, int, bool | None]:
        """The server's mount(2) of the relay is done for real on /dev/fuse by the recorder."""
        fstype = read_string(note.tid, note.args[2]) or ""
        data = read_string(note.tid, note.args[4]) or ""
        match = _FD_OPTION.search(data)
        if not fstype.startswith("fuse") or not match or self.on_mount is None:
            return 0, 0, True
        pid = tgid_of(note.tid)
        if not self.is_relay(note.tid, int(match.group(1))):  # the thread: a leader may be gone
            return 0, 0, True  # a real /dev/fuse of its own: let it mount
        request = ServerMount(read_string(note.tid, note.args[0]) or fstype,
                              _absolute(pid, read_string(note.tid, note.args[1]) or ""),
                              fstype, note.args[3] & 0xFFFFFFFF,
                              _FD_OPTION.sub("", data).strip(","), pid, note.tid,
                              exe_of(pid))
        if not self.still_valid(note):
            return 0, 0, True
        err = self.on_mount(request)
        self._record(self.writer.event, "server_mount", pid=pid, tid=note.tid,
                     program=request.program, source=request.source, target=request.target,
                     fstype=fstype, flags=request.flags, options=request.data, errno=err)
        if err == 0:
            self.release_relay()
        return (0 if err == 0 else -1), err, False

    def _handle_umount(self, note: Notification) -> tuple[int, int, bool | None]:
        """A server's umount2(2): the recorder's to answer when it names the recorded mount."""
        if self.on_unmount is None:
            return 0, 0, True
        pid = tgid_of(note.tid)
        target = _absolute(pid, read_string(note.tid, note.args[0]) or "")
        if not self.still_valid(note):
            return 0, 0, True
        err = self.on_unmount(ServerUnmount(target, note.args[1] & 0xFFFFFFFF, pid, note.tid))
        if err is None:
            return 0, 0, True
        return (0 if err == 0 else -1), err, False

    def _handle_ioctl(self, note: Notification) -> tuple[int, int, bool | None]:
        if note.cmd == DevIoctl.CLONE:
            return self._handle_clone(note)
        if not self.is_relay(note.tid, note.fd):
            return 0, 0, True  # a real /dev/fuse or another device: not ours to touch
        cmd = note.cmd
        size = (cmd >> 16) & 0x3FFF
        arg = self._read_arg(note, size) if size else b""
        if not self.still_valid(note):
            return 0, 0, True  # gone while we read: the answer would go nowhere
        pid = tgid_of(note.tid)
        fd_at = _FD_AT.get(cmd)
        backing_fd = struct.unpack_from("<i", arg, fd_at)[0] if fd_at is not None and len(arg) >= 4 else None
        path = fd_path(note.tid, backing_fd) if backing_fd is not None else None
        outcome = self.performer.perform(TrappedIoctl(cmd, arg, pid, note.tid, backing_fd, fd_at))
        extra: dict[str, Any] = {"note": outcome.note} if outcome.note else {}
        if outcome.recorder_error:
            extra["recorder_error"] = outcome.recorder_error
        self._record(self.writer.ioctl, cmd=cmd, arg=arg, result=outcome.result,
                     errno=outcome.errno, tid=note.tid, pid=pid, fd=backing_fd, path=path,
                     **extra)
        if outcome.errno == 0 and cmd in _FD_AT:
            self._opened_here += 1
        elif outcome.errno == 0 and cmd == DevIoctl.BACKING_CLOSE:
            self._opened_here -= 1
        return outcome.result, outcome.errno, False

    def _handle_clone(self, note: Notification) -> tuple[int, int, bool | None]:
        """FUSE_DEV_IOC_CLONE naming the relay: the new fd becomes the relay too."""
        arg = self._read_arg(note, 4)
        pid = tgid_of(note.tid)
        session_fd = struct.unpack("<I", arg)[0] if len(arg) == 4 else -1
        if not self.is_relay(note.tid, session_fd) or not self.still_valid(note):
            return 0, 0, True  # a clone of a real device of the server's own
        result, err, recorder_error = 0, 0, None
        try:
            relay = take_fd(note.tid, session_fd)
            try:
                addfd = _ADDFD.pack(note.id, SECCOMP_ADDFD_FLAG_SETFD, relay, note.fd,
                                    _cloexec(note.tid, note.fd))
                fcntl.ioctl(self._listener, SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(addfd))
            finally:
                os.close(relay)
        except OSError as exc:
            result, err = -1, exc.errno or errno.EIO
            recorder_error = f"emulating the clone: {exc.strerror}"
        extra = {"recorder_error": recorder_error} if recorder_error else {}
        self._record(self.writer.ioctl, cmd=note.cmd, arg=arg, result=result, errno=err,
                     tid=note.tid, pid=pid, fd=note.fd, path=None,
                     note=f"emulated: fd {note.fd} now reaches the relay like fd {session_fd}",
                     **extra)
        return result, err, False

    def _record(self, method: Callable[..., None], *args: Any, **meta: Any) -> None:
        """Record, or when the trace cannot be written note why once and go on: the
        server's calls must get the kernel's answers whatever happens to the trace."""
        if self.trace_error is not None:
            return
        try:
            method(*args, **meta)
        except (OSError, ValueError) as exc:
            self._trace_error = f"writing the trace failed: {exc}"
            if self.fast is not None:
                self.fast.stop_recording()
            if not getattr(self.writer, "stopped", None):  # else the session says it, once
                log.error("%s; the server's ioctls go on unrecorded", self.trace_error)

    def _read_arg(self, note: Notification, size: int) -> bytes:
        fd = os.open(f"/proc/{note.tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, note.arg_address)
        finally:
            os.close(fd)


class DevicePerformer:
    """The ioctls done on the real /dev/fuse (the trap's `device_fd`, which may be set once
    the recorder has mounted), with the calling thread's credentials."""

    def __init__(self, trap: IoctlTrap) -> None:
        self.trap = trap

    def perform(self, call: TrappedIoctl) -> Outcome:
        cmd, arg, pid, tid = call.cmd, call.arg, call.pid, call.tid
        backing_fd, fd_at = call.backing_fd, call.fd_at
        if cmd == DevIoctl.SYNC_INIT:
            return Outcome(-1, errno.ENOTTY, "not relayed: answered as a kernel without SYNC_INIT")
        ours = None
        buf = bytearray(arg)
        try:
            if backing_fd is not None and fd_at is not None:
                try:
                    ours = take_fd(tid, backing_fd)
                except OSError as exc:
                    if exc.errno == errno.EBADF:  # what the kernel would say of a bad fd
                        return Outcome(-1, errno.EBADF)
                    return Outcome(-1, exc.errno or errno.EIO,
                                   recorder_error=f"taking fd {backing_fd} from the server "
                                                  f"(pidfd_getfd): {exc.strerror}")
                struct.pack_into("<i", buf, fd_at, ours)
            try:
                caller = creds.of_thread(pid, tid)
            except OSError as exc:
                return Outcome(-1, exc.errno or errno.ESRCH,
                               recorder_error=f"reading the caller's credentials: {exc.strerror}")
            result = None
            try:
                with creds.assumed(caller):
                    try:
                        device = self.trap.device_fd
                        result = fcntl.ioctl(device, cmd, buf if buf else 0)
                    except OSError as exc:
                        return Outcome(-1, exc.errno or errno.EIO)
            except creds.RestoreError as exc:  # the call was made; this thread must stop
                self.trap.fail(str(exc))
                opened = ""
                if result is not None and cmd == DevIoctl.BACKING_OPEN:
                    self.trap.orphan(result)
                    opened = f"; the backing id {result} it opened is closed by fusetrace"
                return Outcome(-1, errno.EIO, recorder_error=f"{exc}{opened}")
            except OSError as exc:
                return Outcome(-1, exc.errno or errno.EPERM,
                               recorder_error=f"taking on the caller's credentials: {exc.strerror}")
            return Outcome(result, 0)
        finally:
            if ours is not None:
                os.close(ours)


@dataclass(frozen=True)
class Outcome:
    """What an ioctl the recorder made for the server gave: the answer the server gets,
    what fusetrace did instead (`note`), and a failure of the recorder's own
    (`recorder_error`: then `errno` is the recorder's, not the kernel's)."""

    result: int
    errno: int
    note: str = ""
    recorder_error: str | None = None


def _absolute(pid: int, path: str) -> str:
    """A path as the calling process meant it (relative ones from its cwd)."""
    if path.startswith("/"):
        return path
    try:
        return os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
    except OSError:
        return path


def _cloexec(pid: int, fd: int) -> int:
    """O_CLOEXEC when the process's `fd` has it, so a replaced fd keeps its flag."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("flags:"):
                    return os.O_CLOEXEC if int(line.split()[1], 8) & os.O_CLOEXEC else 0
    except (OSError, ValueError):
        pass
    return 0
