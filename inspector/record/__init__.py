"""`fusetrace record`: run an unmodified FUSE server behind a recording proxy.

The server gets one end of a SOCK_SEQPACKET socketpair in place of /dev/fuse (its own
open of the device, or `/dev/fd/N` in place of its mountpoint), and every message
between the kernel and the server is relayed and recorded before it is forwarded.

Modules: `session` (set-up, every way a session ends), `processes` (the server's
processes and their exits), `signals` (signals with their sender), `relay` (the relay
lanes, INIT masking; their per-message loops are C, in `_fastpath.c`, appending through
`traces/append.h`), `progress` (the live stderr line), `cleanup` (run-directory notes and
`fusetrace cleanup`). What record shares with replay (the server's command line, how it
connects, the seccomp trap with its ioctls performed on the device, the new mount API,
credentials, the ENODEV hang-up) is `inspector.exchange`.
"""

from __future__ import annotations

from .session import RecordConfig, record

__all__ = ["RecordConfig", "record"]
