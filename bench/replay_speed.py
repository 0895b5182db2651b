"""How fast `fusetrace replay` plays a trace: a 100,000-request session of the pyfuse3 test
filesystem (tests/servers/memfs.py), recorded live through the proxy, then replayed against
a fresh memfs. Printed: requests/s live (first request to last reply of the recording),
requests/s replayed (the whole replay() call: server start, every exchange compared,
DESTROY and exit), and their ratio. Nothing is asserted.

Run as root (recording mounts): .venv/bin/python bench/replay_speed.py [--requests N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.replay import replay  # noqa: E402
from inspector.running import fuse_available, recorded_server  # noqa: E402
from traces import TraceReader  # noqa: E402

MEMFS = [sys.executable, str(Path(__file__).resolve().parent.parent / "tests" / "servers" / "memfs.py")]


def workload(mnt: Path, requests: int) -> None:
    """Mostly LOOKUPs of missing names (never cached), with a file created, written and
    closed every 20 of them (CREATE, WRITE, FLUSH, RELEASE …)."""
    n = 0
    while n < requests:
        for i in range(20):
            try:
                os.stat(mnt / f"missing-{n}-{i}")
            except FileNotFoundError:
                pass
        fd = os.open(mnt / f"file-{n}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 100)
        os.close(fd)
        n += 26  # about what one round sends


def live_rate(trace: Path) -> tuple[int, float]:
    """(requests, requests/s) of the recorded session, first request to last reply."""
    first = last = None
    count = 0
    with TraceReader(trace) as reader:
        for rec in reader:
            if rec.is_request:
                count += 1
                first = rec.ts if first is None else first
            elif rec.is_reply:
                last = rec.ts
    assert first is not None and last is not None
    return count, count / ((last - first) / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    reason = fuse_available()
    if reason:
        print(f"cannot record here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        base = Path(tmp)
        mnt, trace = base / "mnt", base / "t.fzt"
        mnt.mkdir()
        with recorded_server([*MEMFS, str(mnt)], mnt, trace, "-s", "0", timeout=30) as rec:
            workload(mnt, args.requests)
            rec.unmount_and_wait(120)
        count, live = live_rate(trace)
        started = time.perf_counter()
        report = replay(trace, [*MEMFS, str(mnt)], timeout=30)
        took = time.perf_counter() - started
    replayed = report.counts.get("requests", 0) / took
    print(f"trace: {count} requests recorded live at {live:,.0f} requests/s")
    print(f"replay: {report.counts.get('requests', 0)} requests in {took:.1f} s = {replayed:,.0f} "
          f"requests/s ({'no differences' if report.ok else report.error or 'DIFFERENCES'})")
    print(f"replay / live: {replayed / live:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
