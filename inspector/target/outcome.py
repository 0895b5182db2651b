"""What went wrong with a server under test, as data: nothing downstream reads English.

Four verdicts: the server exited (with a status) or was killed by a signal while a
request was outstanding, gave no reply within the timeout, or sent a reply the kernel
refuses (`Refusal`). `key()` is what two runs must share to be "the same failure":
reduce keeps a candidate when its key matches, fuzz counts a finding once per key.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Any

from dissectors.summary import opcode_name


class Verdict(enum.Enum):
    EXITED = "exited"
    KILLED = "killed"
    HUNG = "hung"
    REFUSED = "refused"


class Refusal(enum.Enum):
    """Why the kernel would refuse a reply (fs/fuse/dev.c and the reply's consumer)."""

    LENGTH = "its len field is not the message's length"
    UNIQUE = "it answers no request that is waiting"
    ERRNO = "its error is out of the range the kernel takes"
    SIZE = "its body is not the size the opcode's reply has"
    ERROR_BODY = "an error reply with a body"
    INTERRUPT_REPLY = "a reply to INTERRUPT with a body"
    BAD_NODEID = "a new entry with node id 0 or the root's"
    BACKING_ID = "FOPEN_PASSTHROUGH with a backing id that is not open"
    TOO_BIG = "larger than any buffer the kernel reads replies into"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    opcode: int  # of the request being handled (0: none was)
    status: int | None = None  # EXITED: the exit status; KILLED: the signal number
    refusal: Refusal | None = None
    detail: str = ""  # for people: the numbers behind a refusal, the seconds waited
    record: int | None = None  # the request's record index in the trace played, if known

    def key(self) -> tuple[str, int, int | None, str]:
        return (self.verdict.value, self.opcode, self.status,
                self.refusal.name if self.refusal else "")

    def text(self) -> str:
        op = opcode_name(self.opcode) if self.opcode else "start-up"
        if self.verdict is Verdict.EXITED:
            what = f"the server exited with status {self.status} while handling {op}"
        elif self.verdict is Verdict.KILLED:
            what = f"the server was killed by {signal_name(self.status)} while handling {op}"
        elif self.verdict is Verdict.HUNG:
            what = f"no reply to {op}"
        else:
            assert self.refusal is not None
            what = f"{op} reply refused by the kernel: {self.refusal.value}"
        return what + (f" ({self.detail})" if self.detail else "")

    def json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "opcode": self.opcode,
                "opcode_name": opcode_name(self.opcode), "status": self.status,
                "refusal": self.refusal.name if self.refusal else None,
                "detail": self.detail, "record": self.record, "text": self.text()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(Verdict(data["verdict"]), data["opcode"], data["status"],
                   Refusal[data["refusal"]] if data["refusal"] else None, data["detail"],
                   data["record"])


def ended(returncode: int | None, opcode: int) -> Outcome | None:
    """The outcome of a server process that ended (None while it runs)."""
    if returncode is None:
        return None
    if returncode < 0:
        return Outcome(Verdict.KILLED, opcode, -returncode)
    return Outcome(Verdict.EXITED, opcode, returncode)


def signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number or 0).name
    except ValueError:
        return f"signal {number}"
