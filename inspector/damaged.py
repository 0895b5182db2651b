"""The one rule every command follows for a damaged trace: cut short (a recorder killed
mid-write, a copy that stopped) or corrupt part-way.

A command that can work from the readable prefix does, then says so in one line on stderr,
the same words for all, and exits `DAMAGED` whatever it would have exited otherwise: a
verdict on part of a session ("no anomalies", "no such id") is not a verdict on the
session, and a script must be able to tell. A command that needs the whole session
(replay and serve compare or answer up to its end; reduce and fuzz replay it) refuses a
damaged trace with exit 2 and writes nothing.
"""

from __future__ import annotations

import sys

#: the exit status of a command that used the prefix of a damaged trace
DAMAGED = 3

#: the rule as `fusetrace --help` and the README state it
RULE = ("A damaged trace (cut short or corrupt part-way): show, export, check, follow, "
        "stats, sql, browse, compress and decompress use the records before the damage, say "
        "so in one line on stderr ('fusetrace: warning: TRACE is damaged: ...') and exit "
        f"{DAMAGED}, whatever they would have exited otherwise; replay, serve, reduce and "
        "fuzz need the whole session and refuse it with exit 2.")

#: the rule as the help of one command that reads a prefix says it
EPILOG = ("A damaged trace (cut short or corrupt) is read up to the damage, then one warning "
          f"line on stderr and exit {DAMAGED} (fusetrace --help).")


def warning(path: str, tail: str) -> str:
    """The one line every prefix-reading command prints for a damaged trace."""
    return (f"fusetrace: warning: {path} is damaged: {tail}; only the records before the "
            f"damage were used (exit {DAMAGED})")


def finish(path: str, tail: str | None, status: int) -> int:
    """`status`, or the warning on stderr and `DAMAGED` when `tail` says the trace is
    damaged (`tail` as readers, the index and the analysis report it)."""
    if tail is None:
        return status
    sys.stdout.flush()  # the output comes first, the warning after it
    print(warning(path, tail), file=sys.stderr)
    return DAMAGED


class Damage:
    """For commands that read several traces (sql, export --parquet): `__call__(path, tail)`
    says the warning for each damaged one as it is met; `status` gives the exit status."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, path: str, tail: str) -> None:
        self.seen = True
        print(warning(path, tail), file=sys.stderr)

    def status(self, status: int) -> int:
        return DAMAGED if self.seen and status == 0 else status
