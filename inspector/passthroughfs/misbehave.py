"""`--misbehave` switches: ways a server can get passthrough wrong, made on purpose.

Each exists so tests can produce one anomaly for real; what the kernel does in response
is documented (as measured) in the package docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dissectors.constants import Opcode

LONG_NAME = 200  # crash-long-name: names longer than this crash the server

#: Switch name → what it does, for `--help`.
SWITCHES: dict[str, str] = {
    "leak-backing-id": "never BACKING_CLOSE a backing id",
    "close-twice": "BACKING_CLOSE twice on the last release of an inode",
    "unknown-backing-id": "reply with backing id 4242, never opened",
    "passthrough-no-flag": "send the backing id without FOPEN_PASSTHROUGH",
    "direct-io-passthrough": "FOPEN_DIRECT_IO together with FOPEN_PASSTHROUGH",
    "writeback-cache": "negotiate FUSE_WRITEBACK_CACHE along with FUSE_PASSTHROUGH",
    "per-open-backing-id": "a fresh backing id per open instead of one per inode",
    "no-release-reply": "never reply to RELEASE",
    "wrong-size": "GETATTR reports regular files one byte larger than they are",
    "wrong-errno": "RMDIR of a non-empty directory fails with EEXIST instead of ENOTEMPTY",
    "reuse-fh": "hand a file open the previous open's fh again while that is still open",
    "stall=OPCODE:SECONDS": "delay every reply to OPCODE by SECONDS",
    # Seeded bugs, for `fusetrace reduce` and `fuzz` to find:
    "crash-long-name": f"abort() on a request naming more than {LONG_NAME} bytes",
    "short-statfs": "cut the STATFS reply 4 bytes short",
    "hang-append": "never reply to an OPEN with O_APPEND",
}
UNKNOWN_BACKING_ID = 4242


@dataclass(frozen=True)
class Misbehaviour:
    """The switches in effect; all off by default."""

    flags: frozenset[str] = frozenset()
    stalls: dict[int, float] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.flags

    def stall(self, opcode: int) -> float:
        return self.stalls.get(opcode, 0.0)


def parse(values: list[str]) -> Misbehaviour:
    """`["leak-backing-id", "stall=GETATTR:2"]` → Misbehaviour; ValueError names the bad one."""
    flags: set[str] = set()
    stalls: dict[int, float] = {}
    for value in values:
        if value.startswith("stall="):
            op, sep, seconds = value[len("stall="):].partition(":")
            try:
                opcode = int(op) if op.isdigit() else Opcode[op.upper()].value
                stalls[opcode] = float(seconds) if sep else 0.0
            except (KeyError, ValueError):
                raise ValueError(f"bad stall switch {value!r}: want stall=OPCODE:SECONDS") from None
            if stalls[opcode] <= 0:
                raise ValueError(f"bad stall switch {value!r}: SECONDS must be > 0")
        elif value in SWITCHES:
            flags.add(value)
        else:
            raise ValueError(f"unknown misbehaviour {value!r}; known: {', '.join(SWITCHES)}")
    return Misbehaviour(frozenset(flags), stalls)
