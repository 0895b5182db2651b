"""`fusetrace stats`: per opcode count, errors by errno, latency percentiles and bytes;
per backing id its opens and lifetime; and the session's negotiated facts.

One streaming pass pairs requests with replies by `unique` (bytes are the messages' true
lengths, even where the snap length cut the stored copy).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from dissectors.constants import INIT_FLAGS, NO_REPLY_OPCODES
from dissectors.fields import errno_name, flags_repr
from dissectors.offsets import reader
from dissectors.structs import FuseInHeader, FuseOutHeader
from dissectors.summary import opcode_name
from traces import Kind, TraceReader
from traces.stream import gc_paused

from ..lifecycles import Analysis

try:  # the pass in C when the extension is built (setup.py), else in Python
    from ..lifecycles._pass import tally
except ImportError:
    tally = None

_IN = reader(FuseInHeader, "opcode", "unique")
_OUT = reader(FuseOutHeader, "error", "unique")
#: the shortest message read (`tally` reads the same fields, at offsets from traces/facts.h)
_MIN_LEN = max(_IN.size, _OUT.size)
_NO_REPLY = frozenset(int(op) for op in NO_REPLY_OPCODES)


@dataclass
class OpStats:
    count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[int] = field(default_factory=list)  # ns
    bytes_in: int = 0  # requests
    bytes_out: int = 0  # replies

    def percentile(self, p: float) -> int | None:
        """Nearest-rank percentile of the latencies (sorted by `finish`)."""
        lat = self.latencies
        if not lat:
            return None
        return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)]


def collect(path: str) -> tuple[dict[str, OpStats], dict[str, int]]:
    """Per-opcode figures and totals of one trace."""
    if tally is None:
        return _collect(path)
    ops: dict[str, OpStats] = {}
    totals = Counter[str]()
    with TraceReader(path) as reader, gc_paused():
        per_opcode, kinds, notifications, unanswered = tally(reader.arrays(), _MIN_LEN, _NO_REPLY)
    for opcode, (count, bytes_in, bytes_out, latencies, errors) in per_opcode.items():
        st = ops.setdefault(opcode_name(opcode), OpStats())
        st.count += count
        st.bytes_in += bytes_in
        st.bytes_out += bytes_out
        st.latencies += latencies
        for error, n in errors.items():
            st.errors[errno_name(error)] += n
    if notifications:
        totals["notifications"] = notifications
    for kind, n in sorted(kinds.items()):
        totals[Kind(kind).name.lower()] = n
    totals["unanswered"] = unanswered
    for st in ops.values():
        st.latencies.sort()
    return ops, dict(totals)


def _collect(path: str) -> tuple[dict[str, OpStats], dict[str, int]]:
    """`collect` in Python, one record at a time."""
    ops: dict[str, OpStats] = {}
    asked: dict[int, tuple[int, OpStats]] = {}
    totals = Counter[str]()
    kinds = Counter[int]()
    by_opcode: dict[int, OpStats] = {}
    with TraceReader(path) as reader, gc_paused():
        for obj in reader.arrays():
            kind = obj[0]
            kinds[kind] += 1
            if kind > Kind.REPLY or len(raw := obj[2]) < _MIN_LEN:
                continue
            true_len = obj[3].get("len", len(raw)) if len(obj) == 4 else len(raw)
            if kind == Kind.REQUEST:
                opcode, unique = _IN.unpack_from(raw)
                st = by_opcode.get(opcode)
                if st is None:
                    st = by_opcode[opcode] = ops.setdefault(opcode_name(opcode), OpStats())
                st.count += 1
                st.bytes_in += true_len
                if unique and opcode not in NO_REPLY_OPCODES:
                    asked[unique] = (obj[1], st)
            else:
                error, unique = _OUT.unpack_from(raw)
                if unique == 0:
                    totals["notifications"] += 1
                    continue
                pending = asked.pop(unique, None)
                if pending is None:
                    continue
                ts, st = pending
                st.latencies.append(obj[1] - ts)
                st.bytes_out += true_len
                if error:
                    st.errors[errno_name(error)] += 1
        for kind, n in sorted(kinds.items()):
            totals[Kind(kind).name.lower()] = n
        totals["unanswered"] = len(asked)
    for st in ops.values():
        st.latencies.sort()
    return ops, dict(totals)


@dataclass
class RelaySplit:
    """Where the time of the exchanges recorded by `fusetrace record` went: the server's
    share (from the relay handing it the request to its reply reaching the relay: the
    relay's own wake-up for the reply counts here) and what the relay added (the rest of
    the recorded latency: reading, recording and handing the request over)."""

    server: list[int] = field(default_factory=list)  # ns, sorted
    added: list[int] = field(default_factory=list)  # ns, sorted

    def percentile(self, which: str, p: float) -> int | None:
        values = getattr(self, which)
        return values[max(0, math.ceil(p / 100 * len(values)) - 1)] if values else None


def relay_split(path: str) -> RelaySplit:
    """One pass pairing each reply that carries `server_ns` (see `_fastpath.c`) with its
    request's record time."""
    split = RelaySplit()
    asked: dict[int, int] = {}
    with TraceReader(path) as reader, gc_paused():
        for obj in reader.arrays():
            kind = obj[0]
            if kind > Kind.REPLY or len(raw := obj[2]) < _IN.size:
                continue
            if kind == Kind.REQUEST:
                asked[_IN.unpack_from(raw)[1]] = obj[1]
                continue
            unique = _OUT.unpack_from(raw)[1]
            sent = asked.pop(unique, None)
            server = obj[3].get("server_ns") if len(obj) == 4 else None
            if sent is not None and type(server) is int:
                split.server.append(server)
                split.added.append(max(0, obj[1] - sent - server))
    split.server.sort()
    split.added.sort()
    return split


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f}"


def backing_rows(a: Analysis) -> list[dict[str, Any]]:
    rows = []
    for lc in a.lifecycles("backing"):
        opens = sum(1 for e in lc.events if e.what.endswith("reply"))
        closed = lc.state in ("closed", "consumed")
        life = lc.events[-1].ts - lc.events[0].ts if closed and lc.events else None
        rows.append({"backing_id": lc.key, "generation": lc.generation, "path": lc.label,
                     "opens": opens, "lifetime_ns": life, "verdict": lc.verdict})
    return rows


def session_facts(a: Analysis) -> dict[str, Any]:
    init = a.init
    return {"trace": a.path, "records": a.records, "server_argv": a.header.get("argv"),
            "mountpoint": a.header.get("mountpoint"), "kernel": a.header.get("kernel"),
            "minor": init.get("minor"), "dialect": init.get("dialect"),
            "flags": flags_repr(init["flags"], INIT_FLAGS) if init else None,
            "max_write": init.get("max_write"), "ended": a.end_reason if a.ended else None,
            "tail": a.tail}


def _table(header: list[str], rows: list[list[str]], out: IO[str], first: str = "<") -> None:
    """Columns as wide as their widest cell, two spaces apart, so no value runs into the
    next however large: the first aligned by `first`, numbers right, and the last (free
    text) left and unpadded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    aligns = [first] + [">"] * (len(widths) - 1)
    for r in [header, *rows]:
        cells = [f"{cell:{a}{w}}" for cell, a, w in zip(r, aligns, widths)]
        print("  ".join([*cells, r[-1]]).rstrip(), file=out)


def write_stats(a: Analysis, out: IO[str]) -> None:
    ops, totals = collect(a.path)
    facts = session_facts(a)
    for k, v in facts.items():
        if k != "tail" or v:  # a cut trace says where the counts stop
            print(f"{k + ':':<12} {v}", file=out)
    print("totals:      " + ", ".join(f"{k} {v}" for k, v in totals.items()), file=out)
    print(file=out)
    _table(["opcode", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "bytes in",
            "bytes out", "errors"],
           [[name, str(st.count), _ms(st.percentile(50)), _ms(st.percentile(90)),
             _ms(st.percentile(99)), _ms(st.latencies[-1] if st.latencies else None),
             str(st.bytes_in), str(st.bytes_out),
             " ".join(f"{e}×{n}" for e, n in st.errors.most_common())]
            for name, st in sorted(ops.items(), key=lambda kv: -kv[1].count)], out)
    split = relay_split(a.path)
    if split.server:
        print(file=out)
        _table(["recording", "p50 ms", "p99 ms",
                f"({len(split.server)} exchanges; the relay's wake-ups count as the server's)"],
               [[label, _ms(split.percentile(which, 50)), _ms(split.percentile(which, 99)), ""]
                for label, which in (("server", "server"), ("relay added", "added"))], out)
    rows = backing_rows(a)
    if rows:
        print(file=out)
        _table(["backing id", "opens", "lifetime ms", "verdict / path"],
               [[str(r["backing_id"]), str(r["opens"]), _ms(r["lifetime_ns"]),
                 f"{r['verdict']}  {r['path']}"] for r in rows], out, first=">")


def stats_json(a: Analysis) -> dict[str, Any]:
    ops, totals = collect(a.path)
    split = relay_split(a.path)
    return {"session": session_facts(a), "totals": totals, "backing": backing_rows(a),
            "recording": {"exchanges": len(split.server),
                          **{f"{which}_p{p}_ns": split.percentile(which, p)
                             for which in ("server", "added") for p in (50, 99)}},
            "opcodes": {name: {"count": st.count, "errors": dict(st.errors),
                               "p50_ns": st.percentile(50), "p90_ns": st.percentile(90),
                               "p99_ns": st.percentile(99),
                               "max_ns": st.latencies[-1] if st.latencies else None,
                               "bytes_in": st.bytes_in, "bytes_out": st.bytes_out}
                        for name, st in ops.items()}}


def write_stats_json(a: Analysis, out: IO[str]) -> None:
    json.dump(stats_json(a), out, indent=1)
    out.write("\n")
