"""How fast `fusetrace replay` plays a session, against the live run of the same workload.

For each server (fastpt, bench/fastpt/fastpt.c, C on the raw protocol, built here with
gcc as bench/record_overhead.py builds it; and the bundled passthrough filesystem,
Python) the same metadata workload (stat with attribute and entry caching off, open and
close, a directory listing, in turns) runs:

- live: the server mounted directly, no recorder; the workload's wall time;
- recorded: the same workload under `fusetrace record`, which gives the trace;
- replayed: `replay()` of that trace against a fresh server (the whole call: reading the
  trace, starting the server, every reply compared, the server ended as recorded).

Printed: requests, seconds and requests/s of each, and replay / live (how many times the
live run's speed the replay reaches; the target is 2). `--repeat` runs the live run and
the replay that many times, taking turns, and prints the medians. Nothing is asserted.

Run as root (the live runs mount): .venv/bin/python bench/replay_speed.py [--ops N]
[--repeat N] [--only fastpt|passthroughfs] [--serial]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.replay import replay  # noqa: E402
from inspector.running import fuse_available, mounted_server, recorded_server  # noqa: E402
from record_overhead import build_fastpt  # noqa: E402

NO_CACHE = ["-o", "attr_timeout=0,entry_timeout=0"]
PASSTHROUGHFS = [sys.executable, "-m", "inspector.passthroughfs", *NO_CACHE, "--no-passthrough"]


def workload(mnt: Path, ops: int) -> None:
    """`ops` operations: stats of four files, an open and close, a listing, in turns."""
    names = [mnt / f"f{i}" for i in range(4)]
    for n in range(ops):
        turn = n % 8
        if turn < 6:
            os.stat(names[n % 4])
        elif turn == 6:
            os.close(os.open(names[n % 4], os.O_RDONLY))
        else:
            os.listdir(mnt)


def prepare(src: Path) -> None:
    for i in range(4):
        (src / f"f{i}").write_bytes(b"x" * 100)


def live(argv: list[str], mnt: Path, ops: int) -> float:
    """Seconds the workload takes on the server mounted directly."""
    with mounted_server(argv, mnt, timeout=30):
        workload(mnt, min(ops, 200))  # warm up
        started = time.perf_counter()
        workload(mnt, ops)
        return time.perf_counter() - started


def requests_in(report_counts: dict[str, int]) -> int:
    return report_counts.get("requests", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="workload operations")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median shown)")
    parser.add_argument("--only", help="run servers whose name contains this")
    parser.add_argument("--serial", action="store_true",
                        help="replay one request at a time (no pipelining)")
    args = parser.parse_args()
    reason = fuse_available()
    if reason:
        print(f"replay_speed: {reason}", file=sys.stderr)
        return 2
    fastpt = build_fastpt()
    servers: dict[str, Callable[[Path, Path], list[str]]] = {}
    if fastpt is not None:
        servers["fastpt"] = lambda src, mnt: [str(fastpt), *NO_CACHE, "--no-passthrough",
                                              str(src), str(mnt)]
    servers["passthroughfs"] = lambda src, mnt: [*PASSTHROUGHFS, str(src), str(mnt)]
    print(f"{os.cpu_count()} cores; {args.ops} operations; median of {args.repeat}; "
          f"replay {'serial' if args.serial else 'pipelined'}")
    print(f"{'server':14} {'run':9} {'requests':>9} {'seconds':>8} {'requests/s':>11} "
          f"{'replay/live':>12}")
    for name, argv in servers.items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
            src, mnt, trace = Path(tmp, "src"), Path(tmp, "mnt"), Path(tmp, "t.fzt")
            src.mkdir()
            mnt.mkdir()
            prepare(src)
            with recorded_server(argv(src, mnt), mnt, trace, "-q", timeout=30) as rec:
                workload(mnt, args.ops)
                rec.unmount_and_wait(120)
            lives, replays, requests = [], [], 0
            for _ in range(args.repeat):
                lives.append(live(argv(src, mnt), mnt, args.ops))
                started = time.perf_counter()
                report = replay(trace, argv(src, mnt), timeout=30, serial=args.serial)
                replays.append(time.perf_counter() - started)
                requests = requests_in(report.counts)
                if not report.ok:
                    print(f"  {name}: the replay {report.error or 'found differences'}:\n"
                          f"{report.text()[:2000]}", file=sys.stderr)
            t_live, t_replay = statistics.median(lives), statistics.median(replays)
            print(f"{name:14} {'live':9} {requests:9} {t_live:8.2f} {requests / t_live:11,.0f}")
            print(f"{name:14} {'replayed':9} {requests:9} {t_replay:8.2f} "
                  f"{requests / t_replay:11,.0f} {t_live / t_replay:11.2f}x "
                  f"({min(lives) / max(replays):.2f}-{max(lives) / min(replays):.2f})")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
