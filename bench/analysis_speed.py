"""Whole-trace analysis speed on a synthetic trace: lifecycles of every id, `fusetrace
check`, `follow` of one backing id, `stats`.

Figures are printed, not asserted (targets on 1M records, issue 14: lifecycles < 2.5 s, goal
< 1 s; check < 4 s; follow one id < 2 s once lifecycles exist). Run:
.venv/bin/python bench/analysis_speed.py [records]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.lifecycles import analyse, analysis as lifecycle_pass  # noqa: E402
from inspector.reports import stats  # noqa: E402
from inspector.reports.check import write_check  # noqa: E402
from inspector.reports.follow import write_follow  # noqa: E402
from inspector.reports.stats import write_stats  # noqa: E402
from traces import TraceIndex, native  # noqa: E402
from traces.testing import synthetic_trace  # noqa: E402


def timed(what: str, n: int, fn: object) -> object:
    t0 = time.perf_counter()
    result = fn()  # type: ignore[operator]
    took = time.perf_counter() - t0
    print(f"{what:<34} {took:7.2f} s  {n / took:>12,.0f} records/s")
    return result


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000
    print(f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        path = os.path.join(tmp, "bench.fzt")
        synthetic_trace(path, n, seed=1)
        TraceIndex.open(path).close()  # follow reads through the index: build it first
        analysis = timed("lifecycles of every id (analyse)", n, lambda: analyse(path))
        counts = {k: len(analysis.lifecycles(k)) for k in ("backing", "fh", "node")}
        print(f"{'':<34} {counts}, {len(analysis.anomalies)} anomalies")
        with open(os.devnull, "w") as out:
            timed("fusetrace check (analyse + report)", n,
                  lambda: write_check(analyse(path), out, show_all=True))
            middle = analysis.lifecycles("backing")[len(counts) and counts["backing"] // 2]
            t0 = time.perf_counter()
            write_follow(analysis, "backing", middle.key, out)
            print(f"{'follow one backing id (analysed)':<34} {time.perf_counter() - t0:7.3f} s")
            t0 = time.perf_counter()
            write_follow(analysis, "request", analysis.index().unique(n // 2), out)
            print(f"{'follow one request (on demand)':<34} {time.perf_counter() - t0:7.3f} s")
            timed("fusetrace stats (after analyse)", n, lambda: write_stats(analysis, out))
            loops = (lifecycle_pass, "fast_run"), (stats, "tally"), (native, "plain_until")
            if all(getattr(m, name) is not None for m, name in loops):  # the C loops' worth
                saved = [getattr(m, name) for m, name in loops]
                for m, name in loops:
                    setattr(m, name, None)
                timed("analyse, without the C loops", n, lambda: analyse(path).close())
                timed("stats, without the C loops", n, lambda: write_stats(analysis, out))
                for (m, name), fn in zip(loops, saved):
                    setattr(m, name, fn)
        analysis.close()


if __name__ == "__main__":
    main(sys.argv[1:])
