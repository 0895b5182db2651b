"""What every report starts with: the session in one line, and the analysis with a
progress bar on big traces."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..lifecycles import Analysis, analyse
from ..ranges import byte_progress


@contextmanager
def analysed(path: str) -> Iterator[Analysis]:
    """`analyse(path)` with a progress bar on stderr for big traces (a terminal only)."""
    with byte_progress("analysing") as progress:
        analysis = analyse(path, progress)
    try:
        yield analysis
    finally:
        analysis.close()


def session_line(a: Analysis) -> str:
    """`trace.fzt: 108 records, protocol 7.45, passthrough mainline, ended: unmounted`"""
    init = a.init
    proto = f"protocol 7.{init['minor']}" if init else "no INIT exchange"
    dialect = init.get("dialect", "none") if init else "none"
    end = f"ended: {a.end_reason}" if a.ended else "no session end in the trace"
    return f"{a.path}: {a.records} records, {proto}, passthrough {dialect}, {end}"
