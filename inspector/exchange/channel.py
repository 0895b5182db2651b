"""The server's connection when it is not /dev/fuse: one end of a SOCK_SEQPACKET socketpair
(message boundaries kept, as /dev/fuse keeps them), for the recorder's relay and for a
replay alike."""

from __future__ import annotations

import socket

#: Room beyond the file data for the largest other message (a 64 KiB xattr value, its name).
ROOM = 64 << 10
#: The largest message before INIT says otherwise: libfuse's largest max_write (4 MiB)
#: plus headers, with room.
BUFFER_SIZE = (4 << 20) + ROOM
SOCKET_BUFFER = 16 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def server_socketpair() -> tuple[socket.socket, socket.socket, bool]:
    """(ours, the server's end, capped): a SOCK_SEQPACKET pair whose 16 MiB buffers let a
    4 MiB message through, forced as root; an ordinary user gets what
    net.core.[rw]mem_max allows, and `capped` is True."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for sock in pair:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
        return pair[0], pair[1], False
    except PermissionError:
        for sock in pair:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        return pair[0], pair[1], True
