"""Trace file speed: generation, index build, cached open, random access, streaming, show.

Figures are printed, not asserted (targets: index build ≥ 1M records/s, random access
< 1 ms, `fusetrace show` ≥ 100k lines/s). Run: .venv/bin/python bench/trace_speed.py [records]
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from traces import TraceIndex, TraceReader  # noqa: E402
from traces.testing import synthetic_trace  # noqa: E402
from inspector.show import write_show  # noqa: E402


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        path = os.path.join(tmp, "bench.fzt")
        t0 = time.perf_counter()
        synthetic_trace(path, n, seed=1)
        gen = time.perf_counter() - t0
        size = os.path.getsize(path)
        print(f"synthetic trace   {n:,} records, {size / 1e6:.1f} MB in {gen:.2f} s "
              f"({n / gen:,.0f} records/s)")

        t0 = time.perf_counter()
        with TraceIndex.open(path, cache_dir=tmp) as idx:
            build = time.perf_counter() - t0
            assert idx.source == "built" and len(idx) == n, (idx.source, len(idx))
        print(f"index build       {build:.2f} s  {n / build:,.0f} records/s  "
              f"(cache {os.path.getsize(path + '.idx') / 1e6:.1f} MB)")

        t0 = time.perf_counter()
        idx = TraceIndex.open(path, cache_dir=tmp)
        cached = time.perf_counter() - t0
        assert idx.source == "cache"
        print(f"cached open       {cached * 1e3:.1f} ms")

        rng = random.Random(0)
        picks = [rng.randrange(n) for _ in range(10_000)]
        t0 = time.perf_counter()
        for i in picks:
            idx.record(i)
        access = (time.perf_counter() - t0) / len(picks)
        t0 = time.perf_counter()
        for i in picks:
            idx.row(i)
        row = (time.perf_counter() - t0) / len(picks)
        print(f"random access     record(i) {access * 1e6:.1f} µs, row(i) {row * 1e6:.2f} µs "
              f"(avg of {len(picks):,})")
        idx.close()

        t0 = time.perf_counter()
        with TraceReader(path) as reader:
            count = sum(1 for _ in reader)
        stream = time.perf_counter() - t0
        assert count == n
        print(f"reader streaming  {stream:.2f} s  {n / stream:,.0f} records/s")

        t0 = time.perf_counter()
        with open(os.devnull, "w") as out, TraceReader(path) as reader:
            write_show(reader, out, verbose=False, hexa=False, limit=None)
        show = time.perf_counter() - t0
        print(f"fusetrace show    {show:.2f} s  {n / show:,.0f} lines/s (decoded summaries)")


if __name__ == "__main__":
    main(sys.argv[1:])
