"""How a replay failed, reduced to what must stay the same while the trace shrinks.

Without a filter: the live target's structured outcome (`inspector.target.Outcome`):
killed by which signal, exited with which status, hung, or a reply refused for which
reason, and the opcode of the request being handled. With `--keep`: the first
difference the filter selects, as what differs, the opcode of the exchange it belongs to
and the fields. Nothing here reads the text of a message.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from dissectors.summary import opcode_name
from inspector.replay import ReplayReport
from inspector.target.outcome import Outcome, Verdict, signal_name


class Signature(NamedTuple):
    kind: str  # a verdict ("killed", "exited", "hung", "refused") or a difference's `what`
    opcode: str
    detail: str  # the signal, the exit status, the refusal, the differing fields

    def text(self) -> str:
        return f"{self.kind} in {self.opcode}" + (f" ({self.detail})" if self.detail else "")


#: record indices of a candidate trace that `--keep` selects
Selector = Callable[[str], set[int]]


def of_outcome(outcome: Outcome) -> Signature:
    if outcome.verdict is Verdict.KILLED:
        detail = signal_name(outcome.status)
    elif outcome.verdict is Verdict.EXITED:
        detail = f"status {outcome.status}"
    elif outcome.verdict is Verdict.REFUSED and outcome.refusal is not None:
        detail = outcome.refusal.name
    else:
        detail = ""
    return Signature(outcome.verdict.value, opcode_name(outcome.opcode), detail)


def of_differences(report: ReplayReport, chosen: set[int],
                   opcode_of: Callable[[int], int | None]) -> Signature | None:
    """The first difference in a record `chosen` holds (`opcode_of`: a record index of
    the candidate → the opcode of its exchange), or None."""
    for diff in report.differences:
        if diff.record in chosen:
            return Signature(diff.what, opcode_name(opcode_of(diff.record)),
                             ",".join(sorted(f.path for f in diff.fields)))
    return None
