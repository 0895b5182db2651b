"""The tables that need the whole trace: lifecycles and anomalies from the lifecycle pass
(`inspector.lifecycles.analyse`, what `check` and `follow` read), and the `traces` row.

The pass runs in a worker process beside the streaming build (`TraceTables`), so a trace
costs the longer of the two rather than their sum on a machine with two cores or more;
the worker sends back the two tables' record batches, not the `Analysis`, whose events
would be large.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from inspector.lifecycles import Analysis, analyse
from traces.stream import gc_paused

from .build import TraceTables, rows_batch, signed64, to_json
from .schema import BY_NAME

LIFECYCLES, ANOMALIES, TRACES = BY_NAME["lifecycles"], BY_NAME["anomalies"], BY_NAME["traces"]


@dataclass
class PassResult:
    """What the lifecycle pass found: the lifecycles and anomalies tables' batches."""

    lifecycles: pa.RecordBatch
    anomalies: pa.RecordBatch
    end_reason: str | None


def pass_result(path: str, name: str, with_trace: bool) -> PassResult:
    """Run the lifecycle pass over `path` (in a worker: the result is pickled back)."""
    analysis = analyse(path)
    try:
        with gc_paused():  # millions of events are alive: collections would free nothing
            lifecycles, anomalies = _rows(analysis)
        return PassResult(rows_batch(LIFECYCLES, lifecycles, name, with_trace),
                          rows_batch(ANOMALIES, anomalies, name, with_trace),
                          analysis.end_reason if analysis.ended else None)
    finally:
        analysis.close()


def _rows(analysis: Analysis) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The lifecycles' and anomalies' rows in schema order, without `trace`."""
    lifecycles: list[tuple[Any, ...]] = []
    anomalies: list[tuple[Any, ...]] = []
    for kind in ("backing", "fh", "node"):
        for lc in analysis.lifecycles(kind):
            first = lc.events[0] if lc.events else None
            last = lc.events[-1] if lc.events else None
            lifecycles.append((
                kind, signed64(lc.key), lc.generation, lc.label, lc.state, lc.verdict,
                first.index if first else None, last.index if last else None,
                first.ts if first else None, last.ts if last else None,
                len(lc.events), [a.code for a in lc.anomalies]))
    for a in analysis.anomalies:
        subject = a.subject or (None, None)
        anomalies.append((a.code, a.severity, a.message, a.records[0] if a.records else None,
                          list(a.records), subject[0],
                          signed64(subject[1]) if subject[1] is not None else None))
    return lifecycles, anomalies


def workers() -> Executor | None:
    """A worker process for the lifecycle pass when a second core can run it, else None
    (then it runs in line). Forked: the worker needs nothing it would have to re-import."""
    if len(os.sched_getaffinity(0)) < 2:
        return None
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))


def start_pass(pool: Executor | None, path: str, name: str,
               with_trace: bool) -> Future[PassResult] | PassResult:
    if pool is None:
        return pass_result(path, name, with_trace)
    return pool.submit(pass_result, path, name, with_trace)


def finish_pass(pending: Future[PassResult] | PassResult) -> PassResult:
    return pending.result() if isinstance(pending, Future) else pending


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


def _int(value: Any, lo: int = 0, hi: int = 1 << 63) -> int | None:
    return value if type(value) is int and lo <= value < hi else None


def _strings(value: Any) -> list[str] | None:
    return [str(v) for v in value] if type(value) is list else None


def trace_row(tables: TraceTables, found: PassResult) -> tuple[Any, ...]:
    """The `traces` row of a trace whose batches were all read."""
    h = tables.header
    created = _int(h.get("created"))  # ns; the column is µs, as SQL timestamps are
    return (
        os.path.abspath(tables.path), _int(h.get("format"), 0, 1 << 32), _text(h.get("tool")),
        created // 1000 if created is not None else None, _text(h.get("kernel")),
        _text(h.get("source")), _strings(h.get("argv")), _text(h.get("mountpoint")),
        _int(h.get("snaplen"), -(1 << 63)), tables.records, os.path.getsize(tables.path),
        tables.first_ns, tables.last_ns, found.end_reason,
        tables.tail, tables.ctx.minor if tables.init_seen else None,
        tables.ctx.dialect.value, to_json(h))


def pass_batches(tables: TraceTables, found: PassResult) -> list[tuple[str, pa.RecordBatch]]:
    """The lifecycles, anomalies and traces batches of one trace."""
    return [("lifecycles", found.lifecycles), ("anomalies", found.anomalies),
            ("traces", rows_batch(TRACES, [trace_row(tables, found)], tables.name,
                                  tables.with_trace))]
