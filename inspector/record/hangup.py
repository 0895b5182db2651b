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

Threads that wait in poll/epoll rather than in a read cannot be told that way; they get
end-of-file once no thread is left reading (the caller shuts the relay's sending side),
and the trace says so.

Caveats: x86-64 and arm64 (the register that carries a syscall's result); needs ptrace
access to the server (root, or the same user under Yama scope 0/1 for a descendant). When
ptrace is refused, the thread gets end-of-file and the reason is recorded.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

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
    """(syscall number, first argument) of a thread blocked in a syscall, else None."""
    try:
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
    found = []
    for pid in sorted(pids):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            call = _blocked_call(pid, tid)
            if call is None or call[0] not in reads:
                continue
            try:
                if os.readlink(f"/proc/{pid}/fd/{call[1]}") != want:
                    continue
            except OSError:
                continue
            found.append(Reader(pid, tid, call[1], call[0]))
    return found


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
    read when stopped (it got a message meanwhile); raises OSError when ptrace is refused.

    Must be called from one thread throughout (ptrace's tracer is a thread)."""
    setter = _SETTERS.get(platform.machine())
    if setter is None:
        raise OSError(errno.ENOSYS, f"no ptrace register layout for {platform.machine()}")
    _ptrace(PTRACE_SEIZE, reader.tid)
    signal = 0
    try:
        _ptrace(PTRACE_INTERRUPT, reader.tid)
        while True:
            _, status = os.waitpid(reader.tid, _WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return False
            if os.WIFSTOPPED(status) and status >> 16 == PTRACE_EVENT_STOP:
                break
            if os.WIFSTOPPED(status):  # a real signal arrived first: it is passed on
                signal = os.WSTOPSIG(status)
                return False
        return setter(reader.tid, reader)
    finally:
        try:
            _ptrace(PTRACE_DETACH, reader.tid, 0, signal)
        except OSError:
            pass  # it died meanwhile


def available() -> str | None:
    """None, or why readers cannot be given ENODEV on this machine."""
    if platform.machine() not in _SETTERS:
        return f"no ptrace register layout for {platform.machine()}"
    return None
