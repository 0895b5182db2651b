"""A snapshot of what no test may change on the host (see `host_untouched` in conftest)."""

from __future__ import annotations

import os


def host_state() -> dict[str, tuple[int, ...] | None]:
    """What the suite must leave as it found: /dev/fuse's node and /tmp's mode and owner."""
    state: dict[str, tuple[int, ...] | None] = {}
    for path in ("/dev/fuse", "/tmp"):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            state[path] = None
        else:
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    return state
