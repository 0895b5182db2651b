"""What a replay found: differences in record order, and the report made of them.

Everything here is a function of the trace, the server's answers and the masks: no
timestamps, pids, socket numbers or durations, so the same trace against the same
server gives byte-identical reports run after run. One exception: `hidden` counts the
differences each mask hid, and whether a masked clock differed (a ctime in whole seconds)
depends on when the replay ran. The server's last output is shown only when the replay
could not finish.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

_COLUMN = 34
LOG_LINES = 10  # of the server's output, shown when the replay could not finish


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs, as shown (decoded) on both sides."""

    path: str
    recorded: str
    replayed: str
    note: str = ""  # why, when it is more than "not equal" (a translation broken …)


@dataclass
class Difference:
    """One thing the replay did not reproduce, pinned to a record of the trace."""

    record: int  # the record it is pinned to (a reply, an ioctl, a notification)
    what: str  # "reply", "missing reply", "ioctl", "missing ioctl", "extra ioctl", …
    message: str  # the recorded message concerned, one line
    summary: str  # what differs, one line
    fields: list[FieldDiff] = field(default_factory=list)
    recorded: list[tuple[str, str]] = field(default_factory=list)  # every field, decoded
    replayed: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"record {self.record}: {self.what}: {self.message}", f"    {self.summary}"]
        if self.fields:
            lines.append(_row("  ", "field", "recorded", "replayed"))
            for diff in self.fields:
                lines.append(_row("  ≠ ", diff.path, diff.recorded, diff.replayed))
                if diff.note:
                    lines.append(f"      {diff.note}")
        return "\n".join(lines)

    def both_sides(self) -> str:
        """Every field of both messages side by side, differing ones marked."""
        lines = [f"first difference, record {self.record}: {self.what}: {self.message}",
                 f"  {self.summary}"]
        if not (self.recorded or self.replayed):
            return "\n".join(lines)
        differing = {d.path for d in self.fields}
        rec, rep = dict(self.recorded), dict(self.replayed)
        paths = list(rec) + [p for p in rep if p not in rec]
        lines.append(_row("  ", "field", "recorded", "replayed"))
        for path in paths:
            mark = "≠ " if path in differing else "  "
            lines.append(_row("  " + mark, path, rec.get(path, "-"), rep.get(path, "-")))
        notes = [f"  {d.path}: {d.note}" for d in self.fields if d.note]
        return "\n".join(lines + notes)


def _row(lead: str, path: str, recorded: str, replayed: str) -> str:
    return f"{lead}{path:<{_COLUMN}} {recorded:<{_COLUMN - 10}} {replayed}".rstrip()


class End(enum.Enum):
    """How a replay ended."""

    FINISHED = "finished"  # every request played and the server ended as recorded
    EXITED = "exited"  # the server exited (`status`) before the replay was over
    KILLED = "killed"  # the server died of a signal (`signal`) the replay did not send
    NO_REPLY = "no reply"  # no reply within `seconds`: the server hangs on the request
    REFUSED = "refused"  # the replay could not run or go on (`reason`): bad trace, command line …


@dataclass(frozen=True)
class Outcome:
    """The end of a replay as data, for tools built on it (reduce, fuzz): what happened, and
    the recorded request being handled then (`record`, `opcode`; None when none was)."""

    end: End
    status: int | None = None  # the server's exit status (EXITED; FINISHED when it exited)
    signal: int | None = None  # the signal it died of (KILLED; FINISHED when it did)
    seconds: float | None = None  # how long a reply was waited for (NO_REPLY)
    reason: str | None = None  # why (REFUSED)
    record: int | None = None
    opcode: int | None = None
    before_init: bool = False  # the server never answered INIT: it did not start
    #: records of requests pipelined with `record` and unanswered when the server died:
    #: it may have died on one of them (a serial replay pins the one)
    pipelined: tuple[int, ...] = ()

    @property
    def crashed(self) -> bool:
        """Died of a signal that means a crash (not one a replay or a user sends to stop it)."""
        return self.signal in _CRASH_SIGNALS

    def json(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, End) else v) for k, v in asdict(self).items()}


_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL,
                            signal.SIGFPE})


@dataclass
class ReplayReport:
    """The outcome of one replay. `ok` means it ran to the end with no difference."""

    trace: str
    server: list[str]
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None  # the replay could not finish: bad trace, crash, hang
    counts: dict[str, int] = field(default_factory=dict)
    masks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hidden: dict[str, int] = field(default_factory=dict)  # mask → differences it hid
    server_exit: str | None = None
    server_log: str = ""  # the end of the server's output (in text() and json() on an error)
    outcome: Outcome = field(default_factory=lambda: Outcome(End.FINISHED))

    @property
    def ok(self) -> bool:
        return self.error is None and not self.differences

    def text(self) -> str:
        """The human report: a summary, then each difference in record order."""
        counts = self.counts
        lines = [f"fusetrace replay of {self.trace}",
                 f"server: {' '.join(self.server)}"]
        if self.outcome.before_init:  # it never started: why, before anything else
            lines += [f"error: {self.error}", *self._log_lines()]
        lines += [f"replayed {counts.get('requests', 0)} requests: {counts.get('replies', 0)} "
                 f"replies, {counts.get('ioctls', 0)} ioctls and {counts.get('notifications', 0)} "
                 f"notifications compared"]
        if self.server_exit:
            lines.append(f"server {self.server_exit}")
        if self.masks:
            lines.append("masked: " + ", ".join(self.masks))
        lines += [f"note: {note}" for note in self.notes]
        if self.hidden:
            lines.append("differences hidden by masks: " + ", ".join(
                f"{why}: {n}" for why, n in self.hidden.items()))
        n = len(self.differences)
        found = f"{n} difference{'s' if n != 1 else ''}"
        if self.error:
            if not self.outcome.before_init:
                lines += [f"error: {self.error}", *self._log_lines()]
            lines.append(f"result: the replay did not finish ({found} up to the error)")
        else:
            lines.append("result: " + ("no differences" if n == 0 else found))
        for diff in self.differences:
            lines += ["", diff.text()]
        return "\n".join(lines) + "\n"

    def _log_lines(self) -> list[str]:
        tail = self.server_log.splitlines()[-LOG_LINES:]
        return ["the server's last output:", *[f"  | {line}" for line in tail]] if tail else []

    def json(self) -> dict[str, Any]:
        return {"trace": self.trace, "server": self.server, "ok": self.ok, "error": self.error,
                "outcome": self.outcome.json(),
                "counts": self.counts, "masks": self.masks, "notes": self.notes,
                "hidden": self.hidden,
                "server_exit": self.server_exit,
                **({"server_log": self.server_log.splitlines()[-LOG_LINES:]} if self.error else {}),
                "differences": [asdict(d) for d in self.differences]}

    def first_difference_text(self) -> str:
        """The first difference with both messages decoded in full (or the error)."""
        if self.differences:
            return self.differences[0].both_sides()
        return f"error: {self.error}" if self.error else "no differences"
