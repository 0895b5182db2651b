"""Writing an export whole or not at all: a conversion that fails leaves no file behind.

Exports are read by other tools that cannot tell a half-written file from a short
session, so the output goes to a temporary file beside the target and is renamed into
place only once every record has been read and converted. A damaged trace is exported
up to the damage, which the command says on stderr with exit 3 (`inspector.damaged`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


class ExportError(Exception):
    """An export that cannot be made; the message is the one line the user sees."""


@contextmanager
def atomic_output(path: str, binary: bool) -> Iterator[IO[bytes] | IO[str]]:
    """A file to write the export to; `path` "-" is standard output (which cannot be
    taken back, so callers convert everything before they write there)."""
    if path == "-":
        if binary and sys.stdout.isatty():
            raise ExportError("refusing to write binary output to a terminal; use -o FILE")
        yield sys.stdout.buffer if binary else sys.stdout
        (sys.stdout.buffer if binary else sys.stdout).flush()
        return
    where = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{os.path.basename(path)}.")
    except OSError as exc:  # name the file asked for, not the temporary one
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
