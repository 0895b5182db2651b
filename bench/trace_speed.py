"""Trace file speed: generation, index build, cached open, random access, streaming, show;
the same trace compressed (`.fzt.zst`) beside the plain one.

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
from traces.opening import compress_file  # noqa: E402
from traces.testing import synthetic_trace  # noqa: E402
from inspector.show import write_show  # noqa: E402


def measure(path: str, cache_dir: str) -> dict[str, float]:
    """Index build, cached open, random access and streaming of one trace file."""
    n = 0
    t0 = time.perf_counter()
    with TraceIndex.open(path, cache_dir=cache_dir) as idx:
        build = time.perf_counter() - t0
        assert idx.source == "built", idx.source
        n = len(idx)
    t0 = time.perf_counter()
    idx = TraceIndex.open(path, cache_dir=cache_dir)
    cached = time.perf_counter() - t0
    assert idx.source == "cache"
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
    idx.close()
    t0 = time.perf_counter()
    with TraceReader(path) as reader:
        count = sum(1 for _ in reader)
    stream = time.perf_counter() - t0
    assert count == n
    return {"records": n, "size": os.path.getsize(path), "build": build, "cached": cached,
            "access": access, "row": row, "stream": stream}


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        path = os.path.join(tmp, "bench.fzt")
        t0 = time.perf_counter()
        synthetic_trace(path, n, seed=1)
        gen = time.perf_counter() - t0
        print(f"synthetic trace   {n:,} records, {os.path.getsize(path) / 1e6:.1f} MB in "
              f"{gen:.2f} s ({n / gen:,.0f} records/s)")
        t0 = time.perf_counter()
        compress_file(path)
        packing = time.perf_counter() - t0
        packed = path + ".zst"
        print(f"compress          {packing:.2f} s")
        rows = {"plain .fzt": measure(path, tmp), "zstd .fzt.zst": measure(packed, tmp)}
        plain = rows["plain .fzt"]
        print(f"{'':16} {'size MB':>8} {'ratio':>6} {'index k/s':>10} {'cached ms':>10} "
              f"{'record(i) µs':>13} {'row(i) µs':>10} {'stream k/s':>11}")
        for name, r in rows.items():
            print(f"{name:16} {r['size'] / 1e6:8.1f} {r['size'] / plain['size']:6.2f} "
                  f"{n / r['build'] / 1e3:10,.0f} {r['cached'] * 1e3:10.1f} "
                  f"{r['access'] * 1e6:13.1f} {r['row'] * 1e6:10.2f} {n / r['stream'] / 1e3:11,.0f}")

        t0 = time.perf_counter()
        with open(os.devnull, "w") as out, TraceReader(path) as reader:
            write_show(reader, out, verbose=False, hexa=False, limit=None)
        show = time.perf_counter() - t0
        print(f"fusetrace show    {show:.2f} s  {n / show:,.0f} lines/s (decoded summaries)")


if __name__ == "__main__":
    main(sys.argv[1:])
