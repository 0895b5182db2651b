"""`--save-to FILE`: write a summary of SOURCE after the session, slowly, the way
archive-backed servers (fuse-zip, archivemount) write their archive after the unmount.

It is what a recorder must never cut short: the file is written in place, piece by piece
over `--save-seconds`, so a server killed early leaves it visibly short. `state_of` is the
exact content, for tests to compare with.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

log = logging.getLogger(__name__)

PIECES = 32
PAD_TO = 4 << 20  # the summary is padded to this many bytes: large enough to take a while


def state_of(source: str) -> bytes:
    """One line per file under `source` (path, size, sha256), sorted, padded to PAD_TO."""
    lines = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            lines.append(f"{os.path.relpath(path, source)}\t{os.path.getsize(path)}\t{digest}\n")
    body = "".join(lines).encode()
    pattern = b"passthroughfs state padding\n"
    pad = max(PAD_TO - len(body), 0)
    return body + (pattern * (pad // len(pattern) + 1))[:pad]


def save(source: str, target: str, seconds: float) -> None:
    """Write `state_of(source)` to `target` in PIECES pieces over `seconds`, then fsync."""
    data = state_of(source)
    step = -(-len(data) // PIECES)
    log.info("saving state to %s over %.1f s", target, seconds)
    with open(target, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            time.sleep(seconds / PIECES)
        os.fsync(f.fileno())
    log.info("saved %d bytes to %s", len(data), target)
