"""The fuzz loop: workers, each with one live server, streaming mutated tries to it.

A worker starts its server, plays the recorded session to it once (so the server holds
the nodes and handles the recording had, under its own ids), then sends tries: a
recorded request (or one from the corpus) rewritten to the live ids and mutated once
more. The server is restarted only after a failure, when the session can no longer give
tries something to name (every node forgotten, every handle released, even after the
recording is played again), or after `SESSION_TRIES` tries, which bounds the history a
finding is reduced from.

A failure is a suspect until it holds up: the history since the server started is
played to a fresh, idle server with a generous timeout (at least `CONFIRM_MIN` s and 10
times the session's p99 reply time) and must fail the same way (`Outcome.key`); then it
is reduced, saved with the command that checks it, and that command is run: only when
it reproduces the failure is the finding kept.

Feedback without instrumentation: a try whose (opcode, errno, reply shape) or whose new
server log line was not seen before goes into the corpus, which later tries mutate further.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from dissectors.constants import NO_REPLY_OPCODES, Opcode
from dissectors.offsets import OUT_HEADER_SIZE
from dissectors.opcodes import ABOUT_MESSAGES, CONNECTION, ENDINGS
from dissectors.summary import opcode_name
from inspector.reduce import reduce_trace
from inspector.target.layout import IN_HEADER, U64, reply_header
from inspector.target.live import Failure, LiveServer
from inspector.target.outcome import Outcome, Verdict
from inspector.target.play import feed, play
from traces import Kind, Record, TraceReader, TraceWriter

from .mutate import Mutation, Timing, mutations

SESSION_TRIES = 5000
CONFIRM_MIN = 5.0  # seconds a fresh idle server gets before a hang is confirmed
CHAIN = 4  # mutations stacked on one request at most
IDLE = 50  # tries in a row with nothing to name before the recording is played again
#: how the saved command is run to check it (`fusetrace` may not be on PATH)
FUSETRACE = [sys.executable, "-m", "inspector.cli"]
_NUMBERS = re.compile(rb"0x[0-9a-fA-F]+|\d+")
_SKIPPED = CONNECTION | ABOUT_MESSAGES  # not mutated: they are about the session, not files


@dataclass
class Finding:
    outcome: Outcome
    mutation: str  # the try's request and what was done to it
    trace: Path  # reduced
    command: str  # checks it: exit 1 and the same verdict when it reproduces
    tries: int  # tries sent (all workers) when it was found


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    tries: int = 0
    findings: Counter[str] = field(default_factory=Counter)  # saved, by verdict
    unconfirmed: Counter[str] = field(default_factory=Counter)  # suspects that did not hold
    repeats: int = 0  # failures of a kind already saved
    corpus: int = 0
    restarts: int = 0

    def rate(self) -> float:
        return self.tries / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        found = ", ".join(f"{n} {v}" for v, n in sorted(self.findings.items())) or "none"
        shaky = sum(self.unconfirmed.values())
        return (f"{self.tries} tries, {self.rate():.0f}/s; findings: {found}; "
                f"{shaky} not reproduced, {self.repeats} repeats; corpus {self.corpus}; "
                f"{self.restarts} restarts")


class Fuzzer:
    def __init__(self, trace: str | os.PathLike[str], server: Sequence[str],
                 out: str | os.PathLike[str], *, seed: int = 0, jobs: int = 1,
                 timeout: float = 1.0, fresh: str | None = None, hostile: bool = False,
                 mountpoint: str | None = None) -> None:
        """`timeout`: how long a reply may take before the try is a suspected hang."""
        self.trace, self.server, self.out = os.fspath(trace), list(server), Path(out)
        self.seed, self.jobs, self.timeout = seed, max(1, jobs), timeout
        self.fresh, self.hostile, self.mountpoint = fresh, hostile, mountpoint
        with TraceReader(self.trace) as reader:
            self.header = {k: v for k, v in reader.header.items()
                           if k not in ("magic", "format")}
            self.records: list[Record] = list(reader)
        self.route = next((r.meta.get("route") for r in self.records
                           if r.event == "connected"), None)
        reqs = [(r.index, r.raw) for r in self.records if r.kind is Kind.REQUEST
                and r.raw and len(r.raw) >= IN_HEADER.size]
        init = next(((i, raw) for i, raw in reqs if IN_HEADER.unpack_from(raw)[1] == Opcode.INIT),
                    None)
        if init is None:
            raise ValueError(f"{self.trace}: no INIT request: nothing to start a server with")
        self.init_index, self.init = init
        self.requests = [(IN_HEADER.unpack_from(raw)[1], raw) for _, raw in reqs
                         if IN_HEADER.unpack_from(raw)[1] not in _SKIPPED]
        self.by_opcode: dict[int, list[int]] = {}
        for i, (opcode, _) in enumerate(self.requests):
            self.by_opcode.setdefault(opcode, []).append(i)
        self.corpus: list[tuple[int, tuple[Mutation, ...]]] = []
        self.features: set[tuple[object, ...]] = set()
        self.stats = Stats()
        self.found: list[Finding] = []
        self.keys: dict[tuple[object, ...], int] = {}  # outcome key → times tried to confirm
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.p99 = 0.0
        self.numbered = 0  # findings confirmed so far (their file numbers)
        self.unprimed: set[int] = set()  # recorded requests that fail as recorded
        self.error: BaseException | None = None

    # --- the run --------------------------------------------------------------------------

    def run(self, seconds: float, max_tries: int | None = None,
            on_progress: Callable[[Stats], None] | None = None) -> list[Finding]:
        """Fuzz until `seconds` pass or `max_tries` tries were sent (or Ctrl-C).
        `StartError` when no server could be started."""
        self.out.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + seconds
        with tempfile.TemporaryDirectory(prefix="fusetrace-fuzz-") as tmp:
            workers = [_Worker(self, n, Path(tmp) / f"w{n}") for n in range(self.jobs)]
            workers[0].boot()  # a server that cannot start is an error, found at once
            threads = [threading.Thread(target=w.loop, args=(deadline, max_tries), daemon=True)
                       for w in workers]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.5)
                    if on_progress is not None:
                        on_progress(self.stats)
            except KeyboardInterrupt:
                self.stop.set()
                for t in threads:
                    t.join()
            for w in workers:
                w.live.stop()
        if self.error is not None:
            raise self.error
        return self.found

    def live_timeout(self, live: LiveServer) -> float:
        return max(self.timeout, 10 * live.p99())

    def confirm_timeout(self) -> float:
        return max(CONFIRM_MIN, 10 * self.p99, self.timeout)

    # --- findings ---------------------------------------------------------------------------

    def suspect(self, worker: _Worker, outcome: Outcome, what: str) -> None:
        """A failure seen live: confirmed, reduced, saved and checked by its own command."""
        key = outcome.key()
        with self.lock:
            self.p99 = max(self.p99, worker.live.p99())
            tried = self.keys.get(key, 0)
            if tried < 0 or tried >= 3:  # saved already, or never held up three times
                self.stats.repeats += 1
                return
            self.keys[key] = tried + 1
        history = worker.work / "history.fzt"
        self._write_history(history, worker.live)
        timeout = self.confirm_timeout()
        again = self._play(history, timeout)
        if again is None or again.key() != key:
            with self.lock:
                self.stats.unconfirmed[outcome.verdict.value] += 1
            return
        with self.lock:
            self.numbered += 1
            n = self.numbered
            self.keys[key] = -1
        small = self.out / f"finding-{n}.fzt"
        try:
            reduce_trace(history, small, self.server, timeout=timeout, fresh=self.fresh,
                         failed=again)
        except Exception:  # noqa: BLE001 - a reduction that goes wrong keeps the whole history
            shutil.copyfile(history, small)
        command = self._command(small, timeout)
        checked = self._check(small, timeout)
        if checked is None or checked.key() != key:
            with self.lock:
                self.stats.unconfirmed[outcome.verdict.value] += 1
                self.keys[key] = 3
            small.unlink(missing_ok=True)
            return
        text = (f"{checked.text()}\nfound by: {what}\ncheck: {command}\n"
                f"conversation: fusetrace replay {shlex.quote(str(small))} -- "
                f"{shlex.join(self.server)}\n")
        small.with_suffix(".txt").write_text(text)
        with self.lock:
            self.found.append(Finding(checked, what, small, command, self.stats.tries))
            self.stats.findings[checked.verdict.value] += 1

    def _play(self, trace: Path, timeout: float) -> Outcome | None:
        try:
            return play(trace, self.server, timeout=timeout, fresh=self.fresh,
                        mountpoint=self.mountpoint)
        except Exception:  # noqa: BLE001 - a history that cannot be played is no finding
            return None

    def _options(self, timeout: float) -> list[str]:
        out = ["--check", "--timeout", f"{math.ceil(timeout * 10) / 10:g}"]
        if self.fresh is not None:
            out += ["--fresh", self.fresh]
        if self.mountpoint is not None:
            out += ["--mountpoint", self.mountpoint]
        return out

    def _command(self, small: Path, timeout: float) -> str:
        return shlex.join(["fusetrace", "fuzz", str(small), *self._options(timeout), "--",
                           *self.server])

    def _check(self, small: Path, timeout: float) -> Outcome | None:
        """Run the saved command, as a user would; its verdict, or None."""
        argv = [*FUSETRACE, "fuzz", str(small), *self._options(timeout), "--json", "--",
                *self.server]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=60 + 20 * timeout)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 1:
            return None
        try:
            return Outcome.from_json(json.loads(done.stdout))
        except (ValueError, KeyError, TypeError):
            return None

    def _write_history(self, path: Path, live: LiveServer) -> None:
        with TraceWriter(path, dict(self.header)) as out:
            if self.route is not None:
                out.event("connected", route=self.route)
            for is_request, raw in live.history:
                if is_request:
                    out.request(raw)
                else:
                    out.reply(raw)

    # --- feedback ---------------------------------------------------------------------------

    def learned(self, opcode: int, reply: bytes | None, log: bytes, base: int,
                chain: tuple[Mutation, ...]) -> None:
        """Into the corpus when the try showed something new."""
        new = []
        if reply is not None:
            _, error, _ = reply_header(reply)
            body = len(reply) - OUT_HEADER_SIZE
            new.append((opcode, error, body if body < 256 else body.bit_length()))
        for line in log.splitlines():
            new.append(("log", _NUMBERS.sub(b"N", line.strip())[:160]))
        with self.lock:
            fresh = [f for f in new if f not in self.features]
            if fresh:
                self.features.update(fresh)
                if chain and len(chain) < CHAIN:
                    self.corpus.append((base, chain))
                    self.stats.corpus = len(self.corpus)


class _Worker:
    def __init__(self, fz: Fuzzer, n: int, work: Path) -> None:
        self.fz, self.n, self.work = fz, n, work
        work.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(f"{fz.seed}/{n}")
        self.live = LiveServer(fz.server, mountpoint=fz.mountpoint, route=fz.route,
                               fresh=fz.fresh, workdir=work)
        self.tries = 0  # in this server's session
        self.booted = False
        self.primed = False  # the recording gave the session nodes or handles
        self.idle = 0  # tries in a row that had nothing to name

    def boot(self) -> None:
        fz = self.fz
        self.live.start(fz.init, fz.confirm_timeout())
        self.tries = 0
        self.booted = True
        self._prime()

    def _prime(self) -> None:
        fz = self.fz
        outcome = feed(self.live, fz.records, fz.init_index, fz.confirm_timeout(),
                       frozenset(fz.unprimed))
        if outcome is not None:
            self.live.stop()
            self.booted = False
            if outcome.record is not None:  # later sessions start without it
                with fz.lock:
                    fz.unprimed.add(outcome.record)
            fz.suspect(self, outcome, "the recorded session, as recorded")
            return
        if not (self.live.lookups or self.live.open):
            self.booted = self.primed  # it gave some before: a divergence; restart
        else:
            self.primed = True

    def loop(self, deadline: float, max_tries: int | None) -> None:
        fz = self.fz
        try:
            while not fz.stop.is_set() and time.monotonic() < deadline:
                with fz.lock:
                    if max_tries is not None and fz.stats.tries >= max_tries:
                        return
                if not self.booted or self.tries >= SESSION_TRIES:
                    with fz.lock:
                        fz.stats.restarts += self.tries > 0
                    self.boot()
                    if not self.booted:
                        continue
                if self.primed and (self.idle >= IDLE or not (self.live.lookups or self.live.open)):
                    self.idle = 0
                    self._prime()  # what tries name was dropped: the recording gives it back
                    if not self.booted:
                        continue
                self.one()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            fz.error = exc
            fz.stop.set()

    def one(self) -> None:
        fz, live, rng = self.fz, self.live, self.rng
        if fz.corpus and rng.random() < 0.5:
            base, chain = rng.choice(fz.corpus)
        else:
            base = rng.choice(fz.by_opcode[rng.choice(list(fz.by_opcode))])
            chain = ()
        opcode, recorded = fz.requests[base]
        raw = live.translate(opcode, recorded)
        for m in chain:
            raw = m.apply(raw, live, rng)
        mutation = rng.choice(mutations(opcode, raw, live, rng, fz.hostile))
        raw = mutation.apply(raw, live, rng)
        chain = (*chain, mutation)
        if not fz.hostile and not live.repair(opcode, raw, rng.choice):
            self.idle += 1  # it names what the session no longer has: nothing to send
            return
        self.idle = 0
        self.tries += 1
        with fz.lock:
            fz.stats.tries += 1
        timeout = fz.live_timeout(live)
        reply: bytes | None = None
        try:
            if mutation.timing == Timing.PLAIN:
                reply = live.call(raw, timeout)
            else:
                unique = live.send(raw)
                other = None
                if mutation.timing == Timing.INTERRUPT:
                    live.send(bytearray(_interrupt(unique)))
                else:
                    o_op, o_raw = fz.requests[rng.randrange(len(fz.requests))]
                    o_req = live.translate(o_op, o_raw)
                    if o_op not in ENDINGS and (fz.hostile or live.repair(o_op, o_req, rng.choice)):
                        other = (o_op, live.send(o_req))
                if opcode not in NO_REPLY_OPCODES:
                    reply = live.reply(unique, timeout)
                if other is not None and other[0] not in NO_REPLY_OPCODES:
                    live.reply(other[1], timeout)
        except Failure as failure:
            what = f"{opcode_name(opcode)}: " + "; ".join(m.label for m in chain)
            if failure.outcome.verdict is not Verdict.REFUSED:  # the kernel goes on after one
                live.stop()
                self.booted = False
            fz.suspect(self, failure.outcome, what)
            return
        fz.learned(opcode, reply, live.new_output(), base, chain)


def _interrupt(unique: int) -> bytes:
    """An INTERRUPT for `unique`, as the kernel sends it (its own unique is set on send)."""
    body = U64.pack(unique)
    return IN_HEADER.pack(IN_HEADER.size + len(body), Opcode.INTERRUPT, 0, 0, 0, 0, 0, 0,
                          0) + body


def fuzz(trace: str | os.PathLike[str], server: Sequence[str], out: str | os.PathLike[str], *,
         seconds: float = 60.0, seed: int = 0, max_tries: int | None = None, jobs: int = 1,
         timeout: float = 1.0, fresh: str | None = None, hostile: bool = False,
         mountpoint: str | None = None,
         on_progress: Callable[[Stats], None] | None = None) -> list[Finding]:
    """Fuzz `server` from `trace` until `seconds` pass (or `max_tries`); findings in `out`.
    `StartError` when the server cannot be started; `TraceReadError` for a bad trace."""
    fz = Fuzzer(trace, server, out, seed=seed, jobs=jobs, timeout=timeout, fresh=fresh,
                hostile=hostile, mountpoint=mountpoint)
    return fz.run(seconds, max_tries, on_progress)
