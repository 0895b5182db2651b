"""Telling a server its session is over the way the kernel does: its read fails with ENODEV.

Mounted directly, a server learns of the unmount (or an abort) when its read of /dev/fuse
fails with ENODEV; libfuse, go-fuse and the bundled server then end cleanly and exit 0.
Behind the relay it reads a socket, and a socket can only say end-of-file: libfuse takes
that for a short read ("short read on fuse device", exit 1), and a signal for an error
(exit 1, 15 or 143). So once the kernel has said ENODEV to the relay, every server thread
blocked reading the relay socket is given ENODEV itself: `PTRACE_SEIZE` +
`PTRACE_INTERRUPT` interrupt the read (a socket read would restart), the syscall is made
to return -ENODEV instead of restarting, and the thread is let go. It sees exactly what
the kernel would have said, and nothing else of it is touched.

Threads that wait in poll/epoll for the relay to become readable (trio's pyfuse3, event
loops) are told at their next read instead: the relay's sending side is shut so their
wait ends, and the thread is followed syscall by syscall (`PTRACE_SYSCALL`) until it
reads the relay, whose end-of-file is then turned into ENODEV. A thread that does not
read the relay within a few syscalls or a moment is let go; it sees end-of-file, and the
trace says so.

Caveats: x86-64 and arm64 (the register that carries a syscall's result); needs ptrace
access to the server (root, or the same user under Yama scope 0/1 for a descendant). When
ptrace is refused, the thread gets end-of-file and the reason is recorded.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_DETACH = 12, 13, 17
PTRACE_GETREGSET, PTRACE_SETREGSET = 0x4204, 0x4205
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
NT_PRSTATUS, NT_ARM_SYSTEM_CALL = 1, 0x404
_WALL = 0x40000000
#: What a socket read interrupted by ptrace returns in the kernel before it restarts.
_RESTARTS = {512, 513, 514, 516}  # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK

#: The syscalls a thread waits for a descriptor with: poll, select, epoll_wait, pselect6,
#: ppoll, epoll_pwait, epoll_pwait2.
WAIT_SYSCALLS = {
    "x86_64": frozenset({7, 23, 232, 270, 271, 281, 441}),
    "aarch64": frozenset({72, 73, 22, 441}),
}
PTRACE_SYSCALL, PTRACE_SETOPTIONS, PTRACE_GET_SYSCALL_INFO = 24, 0x4200, 0x420E
PTRACE_O_TRACESYSGOOD = 1
_SYSCALL_INFO_ENTRY, _SYSCALL_INFO_EXIT = 1, 2
_FOLLOW_SYSCALLS = 64  # other syscalls in a row after which a followed thread is let go
_FOLLOW_SECONDS = 1.0

#: The syscalls a server reads /dev/fuse with: read, pread64, readv, recvfrom, recvmsg,
#: splice, preadv, recvmmsg, preadv2.
READ_SYSCALLS = {
    "x86_64": frozenset({0, 17, 19, 45, 47, 275, 295, 299, 327}),
    "aarch64": frozenset({63, 67, 65, 207, 212, 76, 69, 243, 286}),
}
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Reader:
    """A server thread blocked reading the relay socket."""

    pid: int
    tid: int
    fd: int
    syscall: int


def _blocked_call(pid: int, tid: int) -> tuple[int, int] | None:
    """(syscall number, first argument) of a thread blocked in a syscall, else None (also
    for a stopped thread: a tracer would resume it, which its SIGSTOP never would)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
        if stat[stat.rfind(b")") + 2:][:1] in (b"T", b"t"):
            return None
        with open(f"/proc/{pid}/task/{tid}/syscall", encoding="ascii") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 2 or fields[0] in ("running", "-1"):
        return None
    return int(fields[0]), int(fields[1], 16)


def blocked_readers(pids: set[int], inode: int) -> list[Reader]:
    """Threads of `pids` blocked in a read of a descriptor that is socket `inode`."""
    reads = READ_SYSCALLS.get(platform.machine(), frozenset())
    want = f"socket:[{inode}]"
    return [Reader(pid, tid, call[1], call[0]) for pid, tid, call in _blocked(pids)
            if call[0] in reads and _fd_is(pid, tid, call[1], want)]


def waiting_threads(pids: set[int]) -> list[Reader]:
    """Threads of `pids` blocked in poll/select/epoll (on anything: which descriptors they
    wait for is in their memory, not in /proc)."""
    waits = WAIT_SYSCALLS.get(platform.machine(), frozenset())
    return [Reader(pid, tid, -1, call[0]) for pid, tid, call in _blocked(pids)
            if call[0] in waits]


def _blocked(pids: set[int]) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """(pid, tid, (syscall, first argument)) of every thread of `pids` blocked in a call."""
    for pid in sorted(pids):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            call = _blocked_call(pid, tid)
            if call is not None:
                yield pid, tid, call


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> None:
    if _libc.ptrace(request, tid, addr, data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace: {os.strerror(err)}")


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _set_enodev_x86_64(tid: int, reader: Reader) -> bool:
    regs = (ctypes.c_uint64 * 27)()  # struct user_regs_struct
    _ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    rax, orig_rax, rdi = regs[10], regs[15], regs[14]
    if ((-rax) & _U64) not in _RESTARTS or orig_rax != reader.syscall or rdi != reader.fd:
        return False  # it left the read before we stopped it: leave it alone
    regs[10] = (-errno.ENODEV) & _U64
    regs[15] = _U64  # no syscall to restart
    _ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))
    return True


def _set_enodev_aarch64(tid: int, reader: Reader) -> bool:
    regs = (ctypes.c_uint64 * 34)()  # struct user_pt_regs: x0..x30, sp, pc, pstate
    iov = _Iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))
    nr = ctypes.c_int32(-1)
    nr_iov = _Iovec(ctypes.addressof(nr), 4)
    _ptrace(PTRACE_GETREGSET, tid, NT_ARM_SYSTEM_CALL, ctypes.addressof(nr_iov))
    if ((-regs[0]) & _U64) not in _RESTARTS or nr.value != reader.syscall:
        return False
    regs[0] = (-errno.ENODEV) & _U64
    _ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))
    nr.value = -1  # no syscall to restart
    _ptrace(PTRACE_SETREGSET, tid, NT_ARM_SYSTEM_CALL, ctypes.addressof(nr_iov))
    return True


_SETTERS = {"x86_64": _set_enodev_x86_64, "aarch64": _set_enodev_aarch64}


def give_enodev(reader: Reader) -> bool:
    """Make `reader`'s blocked read return ENODEV. False when it was no longer in that
    read when stopped (it got a message meanwhile) or has exited meanwhile; raises OSError
    when ptrace is refused.

    Must be called from one thread throughout (ptrace's tracer is a thread)."""
    setter = _SETTERS.get(platform.machine())
    if setter is None:
        raise OSError(errno.ENOSYS, f"no ptrace register layout for {platform.machine()}")
    if not _seize(reader.tid):
        return False
    signal = 0
    try:
        if not _interrupt(reader.tid):
            return False  # it ended while seized: `ServerProcesses.reap` releases it
        status = _stop(reader.tid, time.monotonic() + 1.0)
        if status is None:
            return False
        if status >> 16 != PTRACE_EVENT_STOP:  # a real signal arrived first: pass it on
            signal = os.WSTOPSIG(status)
            return False
        return setter(reader.tid, reader)
    except ProcessLookupError:
        return False
    finally:
        try:
            _ptrace(PTRACE_DETACH, reader.tid, 0, signal)
        except OSError:
            pass  # it died meanwhile


class _SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info, up to the entry's first argument."""

    _fields_ = [("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("ip", ctypes.c_uint64), ("sp", ctypes.c_uint64), ("nr_or_rval", ctypes.c_uint64),
                ("arg0_or_is_error", ctypes.c_uint64), ("rest", ctypes.c_uint64 * 5)]


def _set_result(tid: int, value: int) -> None:
    if platform.machine() == "x86_64":
        regs = (ctypes.c_uint64 * 27)()
        _ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
        regs[10] = value & _U64
        _ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))
        return
    regs = (ctypes.c_uint64 * 34)()
    iov = _Iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    _ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))
    regs[0] = value & _U64
    _ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))


def _stop(tid: int, deadline: float) -> int | None:
    """The tracee's next ptrace stop status, or None when it exited or the deadline
    passed. An exit is left for the parent when that is us (the server's exit must still
    be collected as such); otherwise it is released (see `_release`)."""
    while time.monotonic() < deadline:
        try:
            info = os.waitid(os.P_PID, tid, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT
                             | _WALL)
        except ChildProcessError:
            return None
        if info is None or info.si_pid == 0:
            time.sleep(0.001)
            continue
        if info.si_code != os.CLD_TRAPPED:
            _release(tid)
            return None
        return os.waitpid(tid, _WALL)[1]
    return None


def _release(tid: int) -> None:
    """Collect a tracee's exit as its tracer when we are not its parent: until the tracer
    waits, the kernel tells its real parent nothing (a shell wrapper would wait for the
    server forever), and a traced thread is never reaped at all."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        ours = int(fields["PPid"]) == os.getpid() and int(fields["Tgid"]) == tid
    except (OSError, KeyError, ValueError):
        ours = False  # a thread already gone: nobody else will collect it
    if ours:
        return
    try:
        os.waitpid(tid, _WALL | os.WNOHANG)
    except ChildProcessError:
        pass


def enodev_at_reads(waiters: list[Reader], inode: int, shut: Callable[[], None]) -> list[Reader]:
    """Make the reads of socket `inode` that threads waiting in poll/epoll are about to
    make fail with ENODEV; returns the threads that were told.

    Each thread is stopped first, then `shut` makes the socket readable (end-of-file) so
    their waits end, then each is followed syscall by syscall: every read of the socket
    that says end-of-file is turned into ENODEV (an event loop may read it from several
    tasks). A thread is let go after _FOLLOW_SYSCALLS other syscalls in a row, or after
    _FOLLOW_SECONDS. Raises OSError when ptrace is refused (a thread that exits meanwhile is
    simply not told)."""
    stopped = []
    try:
        for waiter in waiters:
            if not _seize(waiter.tid, PTRACE_O_TRACESYSGOOD):
                continue
            stopped.append(waiter)
            if not _interrupt(waiter.tid) or _stop(waiter.tid, time.monotonic() + 0.5) is None:
                stopped.pop()
                _detach(waiter.tid)
    except OSError:
        for waiter in stopped:
            _detach(waiter.tid)
        raise
    shut()
    told = []
    for waiter in stopped:
        try:
            if _follow(waiter, f"socket:[{inode}]"):
                told.append(waiter)
        except ProcessLookupError:
            continue  # it exited while followed
        finally:
            _detach(waiter.tid)
    return told


def _follow(waiter: Reader, want: str) -> bool:
    """Run a stopped tracee until it is let go (see `enodev_at_reads`), leaving it stopped."""
    reads = READ_SYSCALLS.get(platform.machine(), frozenset())
    tid = waiter.tid
    deadline = time.monotonic() + _FOLLOW_SECONDS
    pending, done, quiet, pass_on = False, False, 0, 0
    while quiet < _FOLLOW_SYSCALLS:
        _ptrace(PTRACE_SYSCALL, tid, 0, pass_on)
        status = _stop(tid, deadline)
        if status is None:  # still running at the deadline (or gone): stop it to let go
            try:
                _ptrace(PTRACE_INTERRUPT, tid)
            except OSError:
                return done
            _stop(tid, time.monotonic() + 0.5)
            return done
        sig, pass_on = os.WSTOPSIG(status), 0
        if sig == 0x80 | 5:  # SIGTRAP | 0x80: a syscall stop
            info = _SyscallInfo()
            _ptrace(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(info), ctypes.addressof(info))
            if info.op == _SYSCALL_INFO_ENTRY:
                fd = info.arg0_or_is_error & 0xFFFFFFFF
                pending = info.nr_or_rval in reads and _fd_is(waiter.pid, tid, fd, want)
                quiet = 0 if pending else quiet + 1
            elif info.op == _SYSCALL_INFO_EXIT and pending:
                pending = False
                if ctypes.c_int64(info.nr_or_rval).value == 0:  # the end-of-file
                    _set_result(tid, -errno.ENODEV)
                    done = True
        elif status >> 16 == 0:  # a signal for the tracee: hand it over
            pass_on = sig
    return done


def _unless_gone(request: int, tid: int, *args: int) -> bool:
    """ptrace(request, tid, ...); False when `tid` has ended meanwhile (threads end in any
    order: that is no refusal). Raises OSError when ptrace is refused."""
    try:
        _ptrace(request, tid, *args)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    return True


def _seize(tid: int, options: int = 0) -> bool:
    """Trace `tid`; False when it has ended meanwhile."""
    return _unless_gone(PTRACE_SEIZE, tid, 0, options)


def _interrupt(tid: int) -> bool:
    """Stop a seized `tid`; False when it has ended meanwhile."""
    return _unless_gone(PTRACE_INTERRUPT, tid)


def _detach(tid: int) -> None:
    try:
        _ptrace(PTRACE_DETACH, tid)
    except OSError:
        pass  # it died meanwhile


def _fd_is(pid: int, tid: int, fd: int, target: str) -> bool:
    """Through the thread: once a process's main thread has ended, /proc/PID/fd is empty."""
    try:
        return os.readlink(f"/proc/{pid}/task/{tid}/fd/{fd}") == target
    except OSError:
        return False


def available() -> str | None:
    """None, or why readers cannot be given ENODEV on this machine."""
    if platform.machine() not in _SETTERS:
        return f"no ptrace register layout for {platform.machine()}"
    return None
