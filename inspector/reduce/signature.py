"""How a replay failed, reduced to what must stay the same while the trace shrinks.

A crash or a hang: its kind and the opcode being handled (the first word of the request
the report names), or, when the replay finished but the server died of a signal (the
recording ended in the same crash, so the replay reproduced it faithfully), that signal
and the opcode of the trace's last request. A difference: what differs, the opcode of its
message and the fields, for the first difference `--keep`'s filter selects (the first of
all without a filter).
"""

from __future__ import annotations

import os
import re
from typing import Callable, NamedTuple

from inspector.replay import ReplayReport

_HANDLING = re.compile(r"^the server (.*?) while handling (\S+)")
_HANG = re.compile(r"^no reply to (\S+) .*the server hangs on it")
#: the signals that mean a crash, not the replay ending the server
CRASH_SIGNALS = ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL")
_CRASHED = re.compile(r"^the server crashed \((.*?)\)")


class Signature(NamedTuple):
    kind: str  # "crash", "hang", "error", or a difference's `what`
    opcode: str
    detail: str  # the signal, the differing fields …

    def text(self) -> str:
        return f"{self.kind} in {self.opcode}" + (f" ({self.detail})" if self.detail else "")


#: record indices of a candidate trace that `--keep` selects (None: no filter)
Selector = Callable[[str], set[int]]


def signature(report: ReplayReport, trace: str | os.PathLike[str], last_opcode: str,
              keep: Selector | None = None) -> Signature | None:
    """The failure's signature, or None when the replay (as filtered) did not fail."""
    if keep is not None:
        chosen = keep(os.fspath(trace))
        for diff in report.differences:
            if diff.record in chosen:
                return _of_difference(diff.what, diff.message, [f.path for f in diff.fields])
        return None
    err = report.error or ""
    if m := _HANDLING.match(err):
        return Signature("crash", m.group(2), _signal(m.group(1)))
    if m := _HANG.match(err):
        return Signature("hang", m.group(1), "")
    if m := _CRASHED.match(err):
        return Signature("crash", last_opcode, _signal(m.group(1)))
    if err:
        return Signature("error", "", re.sub(r"\d+", "N", err))
    if report.server_exit and any(s in report.server_exit for s in CRASH_SIGNALS):
        return Signature("crash", last_opcode, _signal(report.server_exit))
    if report.differences:
        d = report.differences[0]
        return _of_difference(d.what, d.message, [f.path for f in d.fields])
    return None


def _signal(how: str) -> str:
    m = re.search(r"killed by (\S+)", how)
    return m.group(1) if m else how


def _of_difference(what: str, message: str, fields: list[str]) -> Signature:
    words = message.split()
    return Signature(what, words[0] if words else "", ",".join(sorted(fields)))
