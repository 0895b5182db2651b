"""What a `fusetrace serve` session did: answers, repeats, and what the trace could not answer.

Unmatched requests are grouped (the kernel often asks the same thing several times), each
with the closest recorded request and the fields that differ, or with the reason no
recorded request can match (a passthrough open, no request of that opcode at all).
"""

from __future__ import annotations

import errno as errno_mod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dissectors.fields import errno_name


@dataclass
class Miss:
    """One distinct request the trace had no reply for."""

    request: str  # its one-line summary, without `unique`
    count: int = 1
    closest: str | None = None  # "#INDEX summary" of the closest recorded request
    differs: list[str] = field(default_factory=list)
    note: str | None = None  # why no recorded request can match, when known

    def text(self) -> str:
        lines = [f"  {self.request}" + (f"  (×{self.count})" if self.count > 1 else "")]
        if self.note:
            lines.append(f"    {self.note}")
        if self.closest:
            lines.append(f"    closest recorded: {self.closest}")
            lines += [f"      {d}" for d in self.differs]
        return "\n".join(lines)


@dataclass
class ServeReport:
    trace: str
    miss_errno: int = errno_mod.EIO
    requests: int = 0  # requests that wanted an answer (INIT, FORGET, INTERRUPT not counted)
    answered: int = 0  # from the trace, repeats included
    repeated: Counter[str] = field(default_factory=Counter)  # by opcode name
    cut: Counter[str] = field(default_factory=Counter)  # matched, but data cut by the snap length
    misses: dict[Any, Miss] = field(default_factory=dict)
    unused: int = 0  # recorded replies never handed out
    recorded: int = 0  # recorded replies in the book
    stop_reason: str = ""

    @property
    def unmatched(self) -> int:
        return sum(m.count for m in self.misses.values())

    @property
    def ok(self) -> bool:
        """Every request was answered with what the trace recorded."""
        return not self.misses and not self.cut

    def summary(self) -> str:
        parts = [f"{self.requests} requests, {self.answered} answered from the trace"]
        if self.repeated:
            parts.append(f"{sum(self.repeated.values())} of them repeats "
                         f"({_counts(self.repeated)})")
        if self.cut:
            parts.append(f"{sum(self.cut.values())} answered EIO because the trace cut their "
                         f"data (snap length; record with -s 0): {_counts(self.cut)}")
        if self.misses:
            parts.append(f"{self.unmatched} without a match (answered "
                         f"{errno_name(self.miss_errno)})")
        parts.append(f"{self.unused} of {self.recorded} recorded replies unused")
        return "; ".join(parts)

    def text(self) -> str:
        lines = [f"fusetrace serve: {self.trace}: {self.summary()}"
                 + (f" ({self.stop_reason})" if self.stop_reason else "")]
        if self.misses:
            lines.append("requests the trace has no reply for:")
            lines += [m.text() for m in self.misses.values()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace, "ok": self.ok, "stop_reason": self.stop_reason,
            "requests": self.requests, "answered": self.answered,
            "repeated": dict(self.repeated), "cut": dict(self.cut),
            "unmatched": self.unmatched, "miss_errno": errno_name(self.miss_errno),
            "unused": self.unused, "recorded": self.recorded,
            "misses": [{"request": m.request, "count": m.count, "closest": m.closest,
                        "differs": m.differs, "note": m.note} for m in self.misses.values()],
        }


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counter.most_common())
