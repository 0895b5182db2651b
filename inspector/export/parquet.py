"""`fusetrace export --parquet OUT TRACE...`: the `sql` tables as a Parquet dataset.

    OUT/schema.json                         names, types and meaning of every column
    OUT/exchanges/trace=NAME/part-0.parquet one directory per table, one per trace in it
    OUT/ioctls/trace=NAME/part-0.parquet    ...

Hive-style partitions, so DuckDB, Spark, Trino, Polars and pandas read a table as a
directory and get the `trace` column from its name. Every table gets a file for every
trace, empty when it has no rows, so a directory is never missing. The batches are
written as they are built (a row group each): memory stays flat whatever the trace's size.

Exporting into an OUT that already holds a trace of the same name replaces that trace's
partitions, each table's only when the new one is complete; other traces stay. A cut
trace is exported up to its last whole record, and stderr says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from ..sql.schema import BY_NAME, PARTITION, TABLES, schema_json
from ..sql.sources import each_trace
from ..sql.store import write_tables
from .output import ExportError

SCHEMA_FILE = "schema.json"
PART = "part-0.parquet"


def partition_dir(out: str, table: str, name: str) -> str:
    return os.path.join(out, table, f"{PARTITION}={name}")


def write_parquet(out: str, traces: list[str], warn: Callable[[str, str], None]) -> None:
    """Export `traces` into the dataset directory `out` (made if missing)."""
    try:
        os.makedirs(out, exist_ok=True)
        staging = tempfile.mkdtemp(dir=out, prefix=".staging-")
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        for tables, batches in each_trace(traces, with_trace=False):
            files = {}
            for table in TABLES:  # every table, so every trace has a file in each
                path = partition_dir(staging, table.name, tables.name)
                os.makedirs(path)
                files[table.name] = os.path.join(path, PART)
            write_tables(batches, files)
            for table in TABLES:
                _replace(partition_dir(staging, table.name, tables.name),
                         partition_dir(out, table.name, tables.name), staging)
            if tables.tail:
                warn(tables.path, tables.tail)
        schema = os.path.join(staging, SCHEMA_FILE)
        with open(schema, "w") as f:
            f.write(schema_json())
        os.replace(schema, os.path.join(out, SCHEMA_FILE))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(new: str, dest: str, staging: str) -> None:
    """Put the partition `new` at `dest`, moving an older one out of the way first."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.exists(dest):
        os.rename(dest, tempfile.mkdtemp(dir=staging, prefix="old-") + "/p")
    os.rename(new, dest)


def is_export(path: str) -> bool:
    """Whether `path` is a directory `write_parquet` made (it has the schema file)."""
    return os.path.isfile(os.path.join(path, SCHEMA_FILE))


def table_glob(out: str, table: str) -> str:
    """The files of one table of an export, for `read_parquet`."""
    assert table in BY_NAME
    return os.path.join(out, table, f"{PARTITION}=*", "*.parquet")
