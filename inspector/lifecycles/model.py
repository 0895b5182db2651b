"""What a lifecycle is made of: events (record numbers with a line of meaning), a state at
the end of the trace, a verdict, and the anomalies found on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

SUBJECT_KINDS = ("backing", "fh", "node", "request")

CLOSED = "closed properly"
#: A node id still looked up when the session ended by an unmount: the kernel drops its
#: lookups with the connection (it sends no FORGET then), so nothing is left open.
RELEASED_AT_UNMOUNT = "released by the unmount"
OPEN_AT_END = "still open at end of trace"
LEAKED = "leaked"
MISUSED = "misused"


class LifeEvent(NamedTuple):
    """One step of a lifecycle (a tuple: a pass over millions of records makes many)."""

    index: int  # record number in the trace
    ts: int  # monotonic ns
    what: str  # "BACKING_OPEN", "OPEN reply", "READ", "RELEASE", ...
    detail: str  # the decoded fields that matter for this id


#: LifeEvent without the named tuple's Python-level __new__ (a frame per call counts when a
#: pass makes millions)
new_event = partial(tuple.__new__, LifeEvent)


@dataclass(frozen=True)
class Anomaly:
    """Something the kernel or the server got wrong, with the records that prove it."""

    code: str  # stable slug, see `kinds.ANOMALY_KINDS`
    severity: str  # "error", "warning" or "note" (open at the end of a cut trace)
    message: str  # one sentence naming the cause
    records: tuple[int, ...]
    subject: tuple[str, int] | None = None

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "records": list(self.records),
                "subject": list(self.subject) if self.subject else None}


@dataclass(eq=False)
class Lifecycle:
    """One use of one id: a backing id, file handle or node id may be reused after it is
    closed, released or forgotten, and each reuse is a new `generation`."""

    kind: str  # one of SUBJECT_KINDS
    key: int
    generation: int = 0
    events: list[LifeEvent] = field(default_factory=list)
    state: str = "open"
    verdict: str = OPEN_AT_END
    anomalies: list[Anomaly] = field(default_factory=list)
    #: backing ids: open handles carrying it; file handles: opens outstanding;
    #: nodes: the lookup count.
    count: int = 0
    label: str = ""  # what this is, e.g. the backing file's path or "directory handle"

    @property
    def records(self) -> list[int]:
        return [e.index for e in self.events]

    @property
    def name(self) -> str:
        names = {"backing": "backing id", "fh": "fh", "node": "node id", "request": "unique"}
        key = hex(self.key) if self.kind == "fh" else str(self.key)
        gen = f" (use {self.generation + 1})" if self.generation else ""
        return f"{names[self.kind]} {key}{gen}"

    def add(self, index: int, ts: int, what: str, detail: str = "") -> None:
        self.events.append(new_event((index, ts, what, detail)))

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "key": self.key, "generation": self.generation,
                "label": self.label, "state": self.state, "verdict": self.verdict,
                "records": self.records,
                "anomalies": [a.code for a in self.anomalies]}
