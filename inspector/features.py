"""What this kernel can do, found out by asking it, never from its version string.

Backported features, distribution kernels and sysctls make a version number a poor guide,
so each probe tries the thing itself (and is done once per process):

- `max_pages_limit()`: `fs.fuse.max_pages_limit`, the most pages one FUSE request may carry
  (the sysctl exists since 6.13; before it the limit was fixed at 256).
- `seqpacket_limit(sndbuf)`: the largest message a SOCK_SEQPACKET socket takes whole. The
  kernel builds each message in one allocation of at most KMALLOC_MAX_SIZE plus a few
  pages (4 MiB + 68 KiB on x86-64 with 4 KiB pages, whatever the send buffer: larger
  sends fail with ENOBUFS), and within the send buffer (EMSGSIZE).
"""

from __future__ import annotations

import errno
import functools
import socket

#: the kernel's cap on a connection's max_pages when the sysctl is missing (before 6.13)
DEFAULT_MAX_PAGES_LIMIT = 256
_MAX_PAGES_SYSCTL = "/proc/sys/fs/fuse/max_pages_limit"
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def max_pages_limit() -> int:
    """How many pages this kernel lets one FUSE request carry (read each time: it is a
    sysctl, and a connection takes it when it is made)."""
    try:
        with open(_MAX_PAGES_SYSCTL, encoding="ascii") as f:
            return max(1, min(int(f.read()), 0xFFFF))  # max_pages is a u16 on the wire
    except (OSError, ValueError):
        return DEFAULT_MAX_PAGES_LIMIT


@functools.lru_cache(maxsize=None)
def seqpacket_limit(sndbuf: int) -> int:
    """The largest message (bytes) one `send` on a SOCK_SEQPACKET socketpair whose send
    buffer is `sndbuf` (forced when allowed, as the relay does) takes whole: found by
    trying, to the byte, between 4 KiB and twice `sndbuf`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        try:
            ours.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, sndbuf)
        except PermissionError:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        low, high = 4096, 2 * sndbuf + 1  # low is sent whole; high is not
        chunk = bytes(high)
        while high - low > 1:
            size = (low + high) // 2
            try:
                ours.send(memoryview(chunk)[:size])
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN):
                    raise
                high = size
            else:
                theirs.recv(1)  # a SEQPACKET recv takes the whole message off
                low = size
        return low
