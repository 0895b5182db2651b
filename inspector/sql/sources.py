"""The traces a command was given, each with a table name and its batches: the streaming
build and, beside it in a worker, the lifecycle pass."""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator

import pyarrow as pa

from traces import TraceReader

from .analysis import finish_pass, pass_batches, start_pass, workers
from .build import TraceTables
from .schema import TABLES

_SUFFIXES = (".fzt.zst", ".fzt", ".zst")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def trace_names(paths: list[str]) -> list[str]:
    """Each trace's `trace` value: its file name without .fzt/.fzt.zst, made safe for a
    directory name (trace=NAME) and told apart by -2, -3 ... when two are alike."""
    out: list[str] = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path))
        for suffix in _SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                base = base[:-len(suffix)]
                break
        name = _UNSAFE.sub("_", base).lstrip(".") or "trace"
        unique, n = name, 1
        while unique in out:
            n += 1
            unique = f"{name}-{n}"
        out.append(unique)
    return out


Batches = Iterator[tuple[str, pa.RecordBatch]]


def each_trace(paths: list[str], with_trace: bool = True) -> Iterator[tuple[TraceTables, Batches]]:
    """(the trace's builder, all its batches: table name and batch), trace by trace. The
    builder's `tail` says, once its batches are read, whether the trace was cut. Every
    trace's header is read first: one that cannot be opened stops all before any work."""
    for path in paths:
        TraceReader(path).close()
    pool = workers()
    try:
        names = trace_names(paths)
        passes = [start_pass(pool, path, name, with_trace) for path, name in zip(paths, names)]
        for path, name, job in zip(paths, names, passes):
            tables = TraceTables(path, name, with_trace)

            def batches(tables: TraceTables = tables, job: object = job) -> Batches:
                yield from tables.batches()
                yield from pass_batches(tables, finish_pass(job))  # type: ignore[arg-type]

            yield tables, batches()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def read_tables(paths: list[str], warn: Callable[[str, str], None] = lambda path, tail: None) -> dict[str, pa.Table]:
    """Every table of `paths`, in memory; `warn` hears of cut traces."""
    built: dict[str, list[pa.RecordBatch]] = {t.name: [] for t in TABLES}
    for tables, batches in each_trace(paths):
        for name, batch in batches:
            built[name].append(batch)
        if tables.tail:
            warn(tables.path, tables.tail)
    return {t.name: pa.Table.from_batches(built[t.name], t.arrow_schema()) for t in TABLES}
