"""SQL speed: a 1M-record trace to Parquet (`export --parquet`, and `sql`'s first query,
which builds the trace's cached tables), then a grouped p99-latency query over 10 such
traces, on the export and on the traces' cached tables, beside a bare read of the trace.

Targets (printed, not asserted): export < 5 s, query < 2 s, on 2 cores. The 10 traces are
the one trace (and its tables) copied under 10 names: the query reads 10x the rows; a
fresh trace per name would cost minutes of generation and read the same.
Run: .venv/bin/python bench/sql_speed.py [records]
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.export.parquet import partition_dir, write_parquet  # noqa: E402
from inspector.sql.command import Database  # noqa: E402
from traces import TraceReader  # noqa: E402
from traces.testing import synthetic_trace  # noqa: E402

TRACES = 10
QUERY = """
SELECT trace, opcode, count(*) AS n, quantile_cont(latency_ns, 0.99) AS p99_ns
FROM exchanges GROUP BY trace, opcode ORDER BY trace, n DESC
"""


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        trace = os.path.join(tmp, "bench.fzt")
        t0 = time.perf_counter()
        synthetic_trace(trace, n, seed=1)
        print(f"synthetic trace    {n:,} records, {os.path.getsize(trace) / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.2f} s ({cores} cores)")

        t0 = time.perf_counter()
        with TraceReader(trace) as reader:
            for _ in reader.arrays():
                pass
        bare = time.perf_counter() - t0
        print(f"bare read          {bare:.2f} s (every record unpacked, nothing built)")

        out = os.path.join(tmp, "dataset")
        t0, cpu0, child0 = time.perf_counter(), time.process_time(), _children()
        write_parquet(out, [trace], print)
        export = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(out).rglob("*.parquet"))
        print(f"export --parquet   {export:.2f} s  ({export / bare:.1f}x the bare read; "
              f"{size / 1e6:.1f} MB of Parquet)  target < 5 s: "
              f"{'ok' if export < 5 else 'MISSED'}")
        print(f"  cpu: {time.process_time() - cpu0:.2f} s building and writing, "
              f"{_children() - child0:.2f} s in the lifecycle pass's worker (in parallel); "
              f"load average {os.getloadavg()[0]:.1f}")

        one = partition_dir(out, "exchanges", "bench")
        for k in range(TRACES):
            shutil.copytree(one, partition_dir(out, "exchanges", f"copy{k}"))
        shutil.rmtree(one)
        timed_query(Database([], [out]), "the export")

        t0 = time.perf_counter()
        Database([trace])
        first = time.perf_counter() - t0
        print(f"sql, first query   {first:.2f} s to build the trace's cached tables")
        copies = []
        for k in range(TRACES):
            copy = os.path.join(tmp, f"copy{k}.fzt")
            os.link(trace, copy)  # the same size and mtime: its cached tables hold
            shutil.copytree(trace + ".tables", copy + ".tables")
            copies.append(copy)
        t0 = time.perf_counter()
        db = Database(copies)
        timed_query(db, "10 traces' cached tables", time.perf_counter() - t0)


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_query(db: Database, what: str, opened: float = 0.0) -> None:
    t0 = time.perf_counter()
    rows = sum(len(cursor.fetchall()) for _, cursor in db.run(QUERY))
    took = time.perf_counter() - t0 + opened
    [(total,)] = db.con.execute("SELECT count(*) FROM exchanges").fetchall()
    print(f"p99 by trace and opcode over {what} ({total:,} exchanges, {rows} groups): "
          f"{took:.2f} s  target < 2 s: {'ok' if took < 2 else 'MISSED'}")


if __name__ == "__main__":
    main(sys.argv[1:])
