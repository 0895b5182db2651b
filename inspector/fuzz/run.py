"""The fuzz loop: pick an exchange, mutate its request, replay, judge; save findings."""

from __future__ import annotations

import os
import random
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dissectors.constants import Opcode
from inspector.lifecycles import wire
from inspector.reduce import reduce_trace
from inspector.reduce.units import Cut, cut
from inspector.replay import replay

from .mutate import mutations
from .verdict import verdict

_UNIQUE_AT = 8


@dataclass
class Finding:
    what: str  # one line
    mutation: str
    trace: Path  # reduced
    tries: int  # requests sent before it was found


def _given(c: Cut) -> tuple[list[int], list[int]]:
    """Node ids and handles the recorded server handed out (for mutations to reuse)."""
    nodes: set[int] = set()
    fhs: set[int] = set()
    for u in c.units:
        reply = c.records[u.records[-1]].raw or b""
        if len(u.records) < 2 or len(reply) < 16:
            continue
        if u.opcode in (Opcode.LOOKUP, Opcode.MKDIR, Opcode.CREATE, Opcode.MKNOD):
            n = wire.entry_nodeid(reply)
            if n:
                nodes.add(n)
        if u.opcode in (Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE):
            got = wire.open_out(u.opcode, reply)
            if got:
                fhs.add(got[0])
    return sorted(nodes), sorted(fhs)


def fuzz(trace: str | os.PathLike[str], server: Sequence[str], out: str | os.PathLike[str], *,
         seconds: float = 60.0, seed: int = 0, max_tries: int | None = None,
         timeout: float = 1.0, on_try: Callable[[int, int], None] | None = None) -> list[Finding]:
    """Fuzz `server` from `trace` until `seconds` pass (or `max_tries`); findings in `out`."""
    c = cut(trace)
    rng = random.Random(seed)
    nodes, fhs = _given(c)
    targets = [i for i, u in enumerate(c.units) if i not in c.fixed and u.opcode != Opcode.DESTROY]
    if not targets:
        return []
    by_opcode: dict[int, list[int]] = {}
    for i in targets:
        by_opcode.setdefault(c.units[i].opcode, []).append(i)
    opcodes = sorted(by_opcode)
    where = Path(out)
    where.mkdir(parents=True, exist_ok=True)
    found: list[Finding] = []
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    tries = 0
    with tempfile.TemporaryDirectory(prefix="fusetrace-fuzz-") as tmp:
        while time.monotonic() < deadline and (max_tries is None or tries < max_tries):
            u = rng.choice(by_opcode[rng.choice(opcodes)])  # rare opcodes as often as common
            unit = c.units[u]
            req = unit.records[0]
            raw = c.records[req].raw or b""
            choices = mutations(unit.opcode, raw, nodes, fhs, rng)
            label, mutate = rng.choice(choices)
            units = c.closure([u])
            cand, replayed = Path(tmp) / f"t{tries}.fzt", Path(tmp) / f"r{tries}.fzt"
            c.write(cand, units, {req: mutate(raw)})
            tries += 1
            report = replay(cand, server, timeout=timeout, write=replayed,
                            serial=True)  # the exact request a crash or hang happens on
            unique = int.from_bytes(raw[_UNIQUE_AT:_UNIQUE_AT + 8], "little")
            what = verdict(report, str(replayed), unique, unit.opcode)
            if on_try is not None:
                on_try(tries, len(found))
            if what is None:
                for p in (cand, replayed):
                    p.unlink(missing_ok=True)
                continue
            key = _key(what)
            if key in seen:
                continue
            seen.add(key)
            n = len(found) + 1
            small = where / f"finding-{n}.fzt"
            try:
                reduce_trace(cand, small, server, timeout=timeout)
            except Exception:  # the finding did not reproduce under reduce: keep it whole
                small.write_bytes(cand.read_bytes())
            command = f"fusetrace replay {shlex.quote(str(small))} -- {shlex.join(server)}"
            (where / f"finding-{n}.txt").write_text(
                f"{what} (mutation: {Opcode(unit.opcode).name} {label})\n{command}\n")
            found.append(Finding(what, label, small, tries))
    return found


def _key(what: str) -> str:
    """Findings that differ only in numbers and record indices are one finding."""
    words = what.split()
    return " ".join(w for w in words[:8] if not any(ch.isdigit() for ch in w))
