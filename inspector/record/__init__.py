"""`fusetrace record`: run an unmodified FUSE server behind a recording proxy.

The server gets one end of a SOCK_SEQPACKET socketpair in place of /dev/fuse (its own
open of the device, or `/dev/fd/N` in place of its mountpoint), and every message
between the kernel and the server is relayed and recorded before it is forwarded.

Modules: `session` (set-up, every way a session ends), `flavour` (how the server gets
its connection), `trap` (seccomp interception of the server's /dev/fuse open, mount,
unmount, ioctls and splices), `creds` (taking on a server thread's credentials for its
ioctls), `hangup` (telling server threads ENODEV as the kernel would), `processes` (the
server's processes and their exits), `signals` (signals with their sender), `relay` (the
relay thread, INIT masking; its per-message loop is C, in `_fastpath.c`, appending
through `traces/append.h`), `args` (the server's command line: mountpoint heuristic, `-o` mount
options), `progress` (the live stderr line), `cleanup` (run-directory notes and
`fusetrace cleanup`).
"""

from __future__ import annotations

from .session import RecordConfig, record

__all__ = ["RecordConfig", "record"]
