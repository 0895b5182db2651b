"""Tables on disk as Parquet: one trace's batches into one file per table, and the cache
that keeps each trace's files so `sql` builds them once.

The cache sits beside the trace (`TRACE.tables/`, as the index's `TRACE.idx` does), else
under `~/.cache/fusetrace/`: a file per table without the `trace` column (the query names
the trace) and `meta.json` with the trace's size and mtime, the schema's digest and the
release that built it. Anything else, a trace that changed or grew included, is rebuilt;
a cache that cannot be written anywhere leaves the files in a directory removed at exit.
Directories are made 0700: the tables hold names and paths from the traced filesystem.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from traces.index import cache_home
from traces.writer import tool_version

from .schema import TABLES, schema_json
from .sources import each_trace

META = "meta.json"
CACHE_VERSION = hashlib.sha256((schema_json() + tool_version()).encode()).hexdigest()[:16]


def write_tables(batches: Iterable[tuple[str, pa.RecordBatch]], files: dict[str, str]) -> None:
    """Write a trace's batches to `files` (table name → path): every table gets its file,
    empty when it has no rows; each batch is a row group, so memory stays one batch."""
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for table in TABLES:
            writers[table.name] = pq.ParquetWriter(files[table.name],
                                                   table.arrow_schema(with_trace=False),
                                                   compression="zstd")
        for name, batch in batches:
            writers[name].write_batch(batch)
    finally:
        for writer in writers.values():
            writer.close()


@dataclass
class Cached:
    """One trace's table files (`directory/TABLE.parquet`) and what its build found."""

    path: str
    directory: str
    records: int
    tail: str | None

    def file(self, table: str) -> str:
        return os.path.join(self.directory, f"{table}.parquet")


def _places(path: str) -> list[Path]:
    real = os.path.realpath(path)
    key = hashlib.sha256(real.encode()).hexdigest()[:16]
    return [Path(real + ".tables"), cache_home() / f"{key}-{os.path.basename(real)}.tables"]


def _stamp(path: str) -> dict[str, object]:
    st = os.stat(path)
    return {"version": CACHE_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _valid(path: str, directory: Path) -> Cached | None:
    try:
        meta = json.loads((directory / META).read_text())
        stamp = _stamp(path)
        if any(meta.get(k) != v for k, v in stamp.items()):
            return None
        found = Cached(path, str(directory), int(meta["records"]), meta["tail"])
        if all(os.path.isfile(found.file(t.name)) for t in TABLES):
            return found
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _staging(path: str) -> tuple[str, Path | None]:
    """A fresh directory to build in and where it goes, or (a temporary one, None)."""
    for place in _places(path):
        try:
            place.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return tempfile.mkdtemp(dir=place.parent, prefix=f".{place.name}."), place
        except OSError:
            continue
    scratch = tempfile.mkdtemp(prefix="fusetrace-tables-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch, None


def cached_tables(paths: list[str], warn: Callable[[str, str], None]) -> list[Cached]:
    """Each trace's table files, built where missing or stale; `warn` hears of cut
    traces (each time: a cached build remembers where its trace was cut)."""
    found: list[Cached | None] = []
    for path in paths:
        found.append(next((c for place in _places(path) if (c := _valid(path, place))), None))
    todo = [p for p, c in zip(paths, found) if c is None]
    built: dict[str, Cached] = {}
    for tables, batches in each_trace(todo, with_trace=False):
        stamp = _stamp(tables.path)  # before reading: a trace growing meanwhile is rebuilt
        staging, place = _staging(tables.path)
        try:
            write_tables(batches, {t.name: os.path.join(staging, f"{t.name}.parquet")
                                   for t in TABLES})
            with open(os.path.join(staging, META), "w") as f:
                json.dump({**stamp, "records": tables.records, "tail": tables.tail}, f)
            directory = staging if place is None else _install(staging, place)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        built[tables.path] = Cached(tables.path, directory, tables.records, tables.tail)
    out = [c if c is not None else built[p] for p, c in zip(paths, found)]
    for c in out:
        if c.tail:
            warn(c.path, c.tail)
    return out


def _install(staging: str, place: Path) -> str:
    """Move the new build into `place`, an older one out of the way first."""
    old = None
    if place.exists():
        old = tempfile.mkdtemp(dir=place.parent, prefix=f".{place.name}.old.")
        os.rename(place, os.path.join(old, "tables"))
    os.rename(staging, place)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return str(place)
