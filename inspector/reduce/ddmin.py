"""Delta debugging over a trace's exchanges, candidates replayed `jobs` at a time.

Candidates of one round are tried in a fixed order and the first that still fails wins,
whatever order their replays finish in: the result does not depend on `jobs`. Every
smaller failing trace found is written to the output at once, so an interrupt (or a kill)
leaves the smallest so far there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from inspector.replay import replay
from inspector.target.live import with_copy
from inspector.target.outcome import Outcome
from inspector.target.play import StartError, play

from .signature import Selector, Signature, of_differences, of_outcome
from .units import Cut, cut


class NotFailing(Exception):
    """The whole trace's replay does not fail: nothing to keep failing."""


@dataclass
class Reduction:
    signature: Signature
    messages_before: int
    messages: int  # request/reply/ioctl records kept
    replays: int
    interrupted: bool = False


Progress = Callable[[int, int], None]  # (replays so far, messages in the smallest so far)


class _Tester:
    """Plays candidates (by sets of units) to fresh servers (each on a fresh copy of
    `fresh`, if given) and names how each failed."""

    def __init__(self, c: Cut, server: Sequence[str], keep: Selector | None, timeout: float,
                 fresh: str | None, work: Path) -> None:
        self.cut, self.server, self.keep, self.timeout = c, list(server), keep, timeout
        self.fresh, self.work = fresh, work
        self.replays = 0
        self.seen: dict[tuple[int, ...], Signature | None] = {}
        self.record: int | None = None  # where the first failure happened (in `cut`)

    def run(self, units: tuple[int, ...], n: int) -> Signature | None:
        """StartError when the server cannot be started (an error, not a failure)."""
        if units in self.seen:
            return self.seen[units]
        where = self.work / f"c{n}"
        where.mkdir()
        trace = where / "t.fzt"
        kept = self.cut.write(trace, units)
        try:
            sig = self._keep(trace, kept, where) if self.keep else self._play(trace, kept)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        self.seen[units] = sig
        self.replays += 1
        return sig

    def _play(self, trace: Path, kept: list[int]) -> Signature | None:
        outcome = play(trace, self.server, timeout=self.timeout, fresh=self.fresh)
        if outcome is None:
            return None
        if self.record is None and outcome.record is not None:
            self.record = kept[outcome.record]
        return of_outcome(outcome)

    def _keep(self, trace: Path, kept: list[int], where: Path) -> Signature | None:
        assert self.keep is not None
        argv = self.server
        if self.fresh is not None:
            copy = where / "fresh"
            shutil.copytree(self.fresh, copy, symlinks=True)
            argv = with_copy(argv, self.fresh, str(copy))
        report = replay(trace, argv, timeout=self.timeout)
        if report.error and not report.counts:
            raise StartError(report.error)

        def opcode_of(record: int) -> int | None:
            u = self.cut.unit_of(kept[record]) if record < len(kept) else None
            return self.cut.units[u].opcode if u is not None else None
        return of_differences(report, self.keep(str(trace)), opcode_of)


def reduce_trace(path: str | os.PathLike[str], out: str | os.PathLike[str],
                 server: Sequence[str], *, keep: Selector | None = None, jobs: int = 1,
                 timeout: float = 2.0, fresh: str | None = None,
                 progress: Progress | None = None, failed: Outcome | None = None) -> Reduction:
    """Write to `out` the smallest trace found whose replay fails as `path`'s does.
    `failed`: how `path` was just seen to fail (as `play` says), so it is not played again."""
    c = cut(path)
    everything = [i for i in range(len(c.units)) if i not in c.fixed]
    with tempfile.TemporaryDirectory(prefix="fusetrace-reduce-") as tmp, \
            ThreadPoolExecutor(max(1, jobs)) as pool:
        tester = _Tester(c, server, keep, timeout, fresh, Path(tmp))
        counter = iter(range(1 << 62))
        full = tuple(c.closure(everything))
        if failed is not None and keep is None:
            target: Signature | None = of_outcome(failed)
            tester.seen[full] = target
            tester.record = failed.record
        else:
            target = tester.run(full, next(counter))
        if target is None:
            raise NotFailing("the trace's replay does not fail" + (
                " in a difference the filter selects" if keep else ""))
        before = c.messages(full)
        result = Reduction(target, before, before, tester.replays)
        c.write(out, full)

        def fails(groups: list[list[int]]) -> int | None:
            """The index of the first group whose candidate fails as the target does."""
            for start in range(0, len(groups), max(1, jobs)):
                batch = groups[start:start + max(1, jobs)]
                keys = [tuple(c.closure(g)) for g in batch]
                sigs = list(pool.map(lambda k: tester.run(k, next(counter)), keys))
                for i, sig in enumerate(sigs):
                    if sig == target:
                        return start + i
            return None

        cur, n = everything, 2
        at = tester.record
        alone = c.unit_of(at) if at is not None else None
        if alone is not None and alone not in c.fixed and len(everything) > 1:
            # the usual case: the exchange that failed, with what it needs, fails alone
            if fails([[alone]]) is not None:
                cur = [alone]
                kept = c.closure(cur)
                c.write(out, kept)
                result.messages = c.messages(kept)
        try:
            while len(cur) >= 2:
                size = -(-len(cur) // n)
                chunks = [cur[i:i + size] for i in range(0, len(cur), size)]
                complements = [[u for u in cur if u not in set(ch)] for ch in chunks]
                tries = chunks + (complements if len(chunks) > 2 else [])
                hit = fails(tries)
                if hit is not None:
                    cur = tries[hit]
                    n = 2 if hit < len(chunks) else max(n - 1, 2)
                    kept = c.closure(cur)
                    c.write(out, kept)
                    result.messages = c.messages(kept)
                elif n < len(cur):
                    n = min(2 * n, len(cur))
                else:
                    break
                result.replays = tester.replays
                if progress is not None:
                    progress(tester.replays, result.messages)
            if len(cur) == 1 and fails([[]]) is not None:
                cur = []
                kept = c.closure(cur)
                c.write(out, kept)
                result.messages = c.messages(kept)
        except KeyboardInterrupt:
            result.interrupted = True
        result.replays = tester.replays
        return result
