"""A snapshot of what no test may change on the host (see `host_untouched` in conftest)."""

from __future__ import annotations

import os


def host_state() -> dict[str, tuple[int, ...] | None]:
    """What the suite must leave as it found: the device nodes tests and servers touch
    (a confused server once chmod'ed /dev/null) and /tmp's mode and owner."""
    state: dict[str, tuple[int, ...] | None] = {}
    for path in ("/dev/fuse", "/dev/null", "/dev/zero", "/tmp"):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            state[path] = None
        else:
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    return state
