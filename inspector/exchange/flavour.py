"""How a server gets its /dev/fuse connection: chosen for `record` (`Connect`, from what
the server does), guessed from the binary for `replay` (`guess`, which cannot watch).

libfuse 3.3+ takes `/dev/fd/N` as its mountpoint and never opens the device. Everything
else (libfuse 2, Go libraries, servers with their own FUSE code, the fusermount3 helper)
opens /dev/fuse and calls mount(2), which the recorder's trap catches (its `on_mount`
mode), at the price of looking at each O_RDWR open.
"""

from __future__ import annotations

import enum
import os
import shutil

#: How much of a binary to read looking for its dynamic library names.
_SCAN_BYTES = 16 << 20


class Flavour(enum.Enum):
    DEV_FD = "dev-fd"  # hand the server /dev/fd/N in place of its mountpoint
    DEVICE_OPEN = "device-open"  # let it open /dev/fuse and mount(2); catch both


def guess(argv: list[str]) -> Flavour:
    """DEVICE_OPEN for ELF binaries that need libfuse.so.2; DEV_FD for everything else
    (libfuse 3 binaries, scripts such as pyfuse3 filesystems and our own server)."""
    path = shutil.which(argv[0]) if argv else None
    if path is None:
        return Flavour.DEV_FD
    try:
        with open(os.path.realpath(path), "rb") as f:
            head = f.read(_SCAN_BYTES)
    except OSError:
        return Flavour.DEV_FD
    if head[:4] == b"\x7fELF" and b"libfuse.so.2\0" in head and b"libfuse3.so" not in head:
        return Flavour.DEVICE_OPEN
    return Flavour.DEV_FD


class Connect(enum.Enum):
    """`fusetrace record --connect`: how the server is given its connection.

    AUTO leaves the server's command line as typed and lets it get the device the way it
    always does (opening /dev/fuse and calling mount(2), or running the fusermount3
    helper, which does the same): the trap hands it the relay and mounts the real device
    with the server's own source, type, flags and options, so /proc/self/mountinfo reads
    as for a direct mount. DEVICE_OPEN and HELPER are that same path, named for what the
    server is expected to do (the trace records what it did). DEV_FD mounts first and
    hands the server `/dev/fd/N` in place of its mountpoint (libfuse >= 3.3 only; the
    mount is fusetrace's, made from the server's `-o` options); it needs no seccomp for
    the connection, and is the fallback where the trap is missing.
    """

    AUTO = "auto"
    DEV_FD = "dev-fd"
    DEVICE_OPEN = "device-open"
    HELPER = "helper"

    @property
    def server_mounts(self) -> bool:
        return self is not Connect.DEV_FD
