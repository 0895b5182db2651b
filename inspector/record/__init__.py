"""`fusetrace record`: run an unmodified FUSE server behind a recording proxy.

fusetrace opens /dev/fuse and mounts the server's mountpoint itself, hands the server one
end of a SOCK_SEQPACKET socketpair as `/dev/fd/N` in place of the mountpoint (libfuse's
convention since 3.3), and relays every message between the two, recording each one
before it is forwarded.

Modules: `args` (the server's command line: mountpoint heuristic, `-o` mount options),
`relay` (the relay thread, INIT masking; its per-message loop and the trace appender
are C, in `_fastpath.c`), `session` (mount, server process,
every way a session ends), `progress` (the live stderr line), `cleanup` (run-directory
notes and `fusetrace cleanup`), `trap` (seccomp interception of the server's /dev/fuse
ioctls, when present).
"""

from __future__ import annotations

from .session import RecordConfig, record

__all__ = ["RecordConfig", "record"]
