"""Opening a trace whatever its form, and converting between the forms: the one place
that knows both `stream` (plain traces) and `compressed`, so neither imports the other's
opener (they formed an import circle)."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Callable

from . import compressed
from .compat import check_header
from .compressed import FRAME_BYTES, CompressedTraceFile, FrameWriter
from .errors import TraceReadError
from .stream import TraceFile, read_header


def open_trace(path: str | os.PathLike[str]) -> TraceFile:
    """Open `path` (plain or compressed, see `compressed.py`) and check its header; any
    problem is a `TraceReadError`."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TraceReadError(f"{where}: no such file") from None
    except OSError as exc:
        raise TraceReadError(f"{where}: cannot open: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise TraceReadError(f"{where}: is a directory, not a trace")
        if not stat.S_ISREG(mode):
            raise TraceReadError(f"{where}: not a regular file")
        if compressed.is_compressed(os.pread(fd, 4, 0)):
            return compressed.open_compressed(fd, where, read_header, check_header)
        obj, start = read_header(lambda size, pos: os.pread(fd, size, pos), where)
        header, upgrade = check_header(obj, where)
        return TraceFile(fd, where, header, obj["format"], start, upgrade)
    except BaseException:
        os.close(fd)
        raise


# --- whole-file conversion ----------------------------------------------------------

def _target(source: str, output: str | None, suffix_from: str, suffix_to: str) -> str:
    if output:
        return output
    if suffix_from:
        if not source.endswith(suffix_from):
            raise TraceReadError(f"{source}: does not end in {suffix_from}; say where with -o")
        out = source[:-len(suffix_from)]
    else:
        out = source + suffix_to
    if os.path.exists(out):
        raise TraceReadError(f"{out}: exists; name another with -o")
    return out


def _write_atomically(target: str, fill: Callable[[int], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(target)),
                               prefix=f".{os.path.basename(target)}.")
    try:
        fill(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        raise


def compress_file(source: str, output: str | None = None, level: int = 3) -> str | None:
    """Compress a plain trace byte for byte; returns a note for the user, or None."""
    trace = open_trace(source)
    try:
        if isinstance(trace, CompressedTraceFile):
            raise TraceReadError(f"{source}: already compressed")
        target = _target(source, output, "", ".zst")

        def fill(fd: int) -> None:
            frames, offset = FrameWriter(fd, level), 0
            while chunk := trace.pread(FRAME_BYTES, offset):
                frames.frame(chunk)
                offset += len(chunk)

        _write_atomically(target, fill)
    finally:
        trace.close()
    return None


def decompress_file(source: str, output: str | None = None) -> str | None:
    """The plain trace inside a compressed one, up to its last whole frame; returns a
    note when the file ended in a cut or bad frame."""
    trace = open_trace(source)
    try:
        if not isinstance(trace, CompressedTraceFile):
            raise TraceReadError(f"{source}: not compressed")
        target = _target(source, output, ".zst", "")
        frames = trace.frames

        def fill(fd: int) -> None:  # the frames, and what a killed writer's spool holds
            offset = 0
            while chunk := trace.pread(FRAME_BYTES, offset):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                offset += len(chunk)

        _write_atomically(target, fill)
        why = frames.damage()
        return f"{why}; wrote the {len(frames.file_at)} whole frames before it" if why else None
    finally:
        trace.close()
