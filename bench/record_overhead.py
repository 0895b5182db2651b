"""What recording costs: each workload on the same server, direct and under `fusetrace record`
(and under `strace -f`, what users reach for today, and libfuse's own `-d` log for a
libfuse server), side by side in one run, as ratios; beside them the ceiling, the same
relay recording nothing of the messages (`record --forward-only`).

Figures are printed, never asserted. Run as root: .venv/bin/python bench/record_overhead.py
[--seconds S] [--repeat N] [--only NAME]. Servers: the bundled passthrough filesystem
(Python), `fastpt` (bench/fastpt/fastpt.c: C on the raw protocol, multi-threaded, with
passthrough; built here with gcc when its source is newer than the binary), and Debian's
fuse-overlayfs (C, libfuse 3) for the metadata loops, with attribute and entry caching off
so every stat reaches the server. The Python server's own cost hides the recorder's;
fastpt's does not.

On a small machine one run of a mode moves by ±20 %, so each mode runs `--repeat` times,
the modes taking turns, and the median is printed with the range of its ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.running import fuse_available, mounted_server  # noqa: E402

SERVER = [sys.executable, "-m", "inspector.passthroughfs"]
FUSETRACE = [sys.executable, "-m", "inspector.cli"]
NO_CACHE = ["-o", "attr_timeout=0,entry_timeout=0"]
BIG = 512 << 20
FASTPT_DIR = Path(__file__).resolve().parent / "fastpt"


def build_fastpt() -> Path | None:
    """bench/fastpt/fastpt, compiled when missing or older than its source; None (and
    why, on stderr) without gcc."""
    source, binary = FASTPT_DIR / "fastpt.c", FASTPT_DIR / "fastpt"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    if not shutil.which("gcc"):
        print("record_overhead: no gcc, so no fastpt runs", file=sys.stderr)
        return None
    subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(source)],
                   check=True)
    return binary


def stat_loop(mnt: Path, stop: float) -> int:
    n, path = 0, mnt / "small"
    while time.perf_counter() < stop:
        os.stat(path)
        n += 1
    return n


def open_close(mnt: Path, stop: float) -> int:
    n, path = 0, mnt / "small"
    while time.perf_counter() < stop:
        os.close(os.open(path, os.O_RDONLY))
        n += 1
    return n


def mixed_4_clients(mnt: Path, stop: float) -> int:
    counts = [0] * 4

    def client(i: int) -> None:
        path = mnt / f"small{i}"
        while time.perf_counter() < stop:
            os.stat(path)
            os.close(os.open(path, os.O_RDONLY))
            os.listdir(mnt)
            counts[i] += 3

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def sequential_read(mnt: Path, stop: float) -> int:
    """MiB read from a 512 MiB file, in 1 MiB reads, page cache dropped before each pass."""
    done = 0
    while time.perf_counter() < stop:
        fd = os.open(mnt / "big", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while os.read(fd, 1 << 20):
                done += 1
        finally:
            os.close(fd)
    return done


WORKLOADS: dict[str, tuple[Callable[[Path, float], int], list[str], str]] = {
    "stat loop, attr caching off": (stat_loop, NO_CACHE, "stat/s"),
    "open+close, passthrough": (open_close, NO_CACHE, "opens/s"),
    "open+close, no passthrough": (open_close, [*NO_CACHE, "--no-passthrough"], "opens/s"),
    "4 clients, mixed metadata": (mixed_4_clients, NO_CACHE, "ops/s"),
    "sequential read, passthrough": (sequential_read, [], "MiB/s"),
    "sequential read, no passthrough": (sequential_read, ["--no-passthrough"], "MiB/s"),
}


def overlay_argv(src: Path, mnt: Path, debug: bool = False) -> list[str]:
    """fuse-overlayfs over `src` with fresh upper/work dirs, in the foreground."""
    upper, work = src.parent / "upper", src.parent / "work"
    for d in (upper, work):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    return ["fuse-overlayfs", "-f", *(["-d"] if debug else []), "-o",
            f"lowerdir={src},upperdir={upper},workdir={work},timeout=0", str(mnt)]


OVERLAY_WORKLOADS = {"stat loop, attr caching off": stat_loop,
                     "open+close (it has no passthrough)": open_close,
                     "4 clients, mixed metadata": mixed_4_clients}


def prepare(src: Path) -> None:
    (src / "small").write_bytes(b"x" * 100)
    for i in range(4):
        (src / f"small{i}").write_bytes(b"y" * 100)
    with open(src / "big", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(BIG >> 20):
            f.write(block)


def measure(wrapper: list[str], server: list[str], mnt: Path,
            workload: Callable[[Path, float], int], seconds: float) -> float:
    with mounted_server([*wrapper, *server], mnt, timeout=30):
        workload(mnt, time.perf_counter() + min(0.5, seconds / 4))  # warm up
        start = time.perf_counter()
        count = workload(mnt, start + seconds)
        return count / (time.perf_counter() - start)


def compare(name: str, unit: str, runs: dict[str, Callable[[], float]], repeat: int) -> None:
    """Run every mode `repeat` times, taking turns, and print medians as ratios to the
    first mode's median (and the ratio's range over the rounds)."""
    rates: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(repeat):
        for mode, run in runs.items():
            rates[mode].append(run())
    base = rates[next(iter(runs))]
    for mode, got in rates.items():
        ratios = [r / b for r, b in zip(got, base)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if repeat > 1 else ""
        median = statistics.median(got)
        print(f"{name:40} {mode:24} {median:10.0f} {unit:>7} "
              f"{median / statistics.median(base):6.2f} {spread:>10}")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median shown)")
    parser.add_argument("--only", help="run workloads whose name contains this")
    parser.add_argument("--direct-only", action="store_true", help="skip the recorder")
    args = parser.parse_args()
    reason = fuse_available()
    if reason:
        print(f"record_overhead: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fusetrace-bench-") as tmp:
        src, mnt = Path(tmp, "src"), Path(tmp, "mnt")
        src.mkdir()
        mnt.mkdir()
        prepare(src)
        trace = Path(tmp, "bench.fzt")
        modes = {"direct": []}
        if not args.direct_only:
            modes["fusetrace record"] = [*FUSETRACE, "record", "-q", "-w", str(trace), "--"]
            modes["record --spin-us 0"] = [*FUSETRACE, "record", "-q", "--spin-us", "0",
                                           "-w", str(trace), "--"]
            # the ceiling: the same relay and trap, recording nothing of the messages
            modes["relay only (ceiling)"] = [*FUSETRACE, "record", "-q", "--forward-only",
                                             "-w", str(trace), "--"]
            modes["record --connect dev-fd"] = [*FUSETRACE, "record", "-q", "--connect",
                                                "dev-fd", "-w", str(trace), "--"]
        if shutil.which("strace"):
            modes["strace -f"] = ["strace", "-f", "-qq", "-o", "/dev/null"]
        print(f"{os.cpu_count()} cores, {args.seconds:g} s per run, median of {args.repeat}; "
              f"ratio = rate / direct rate (range over the rounds)")
        print(f"{'workload':40} {'mode':24} {'rate':>10} {'unit':>7} {'ratio':>6} {'range':>10}")
        fastpt = build_fastpt()
        servers = {"": SERVER, **({"fastpt ": [str(fastpt)]} if fastpt else {})}
        for label, program in servers.items():
            for name, (workload, server_args, unit) in WORKLOADS.items():
                if args.only and args.only not in f"{label}{name}":
                    continue
                server = [*program, str(src), str(mnt), *server_args]
                compare(f"{label}{name}", unit, {
                    mode: (lambda w=wrapper: measure(w, server, mnt, workload, args.seconds))
                    for mode, wrapper in modes.items()
                    if not ("read" in name and mode == "strace -f")  # that only measures strace
                }, args.repeat)
        if not shutil.which("fuse-overlayfs"):
            return 0
        for name, workload in OVERLAY_WORKLOADS.items():
            if args.only and args.only not in f"overlayfs {name}":
                continue
            compare(f"overlayfs {name}", "op/s", {
                mode: (lambda w=wrapper, debug=mode == "libfuse -d":
                       measure(w, overlay_argv(src, mnt, debug), mnt, workload, args.seconds))
                for mode, wrapper in {**modes, "libfuse -d": []}.items()
            }, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
