"""`fusetrace reduce` and `fuzz` speed against the bundled passthrough filesystem (needs
root and /dev/fuse: the session is recorded through a real mount).

Records a session of FILES create/write/stat rounds that ends with a 220-byte name
crashing `--misbehave crash-long-name`, reduces it (printing requests before, messages
after, replays, seconds), then fuzzes the correct server for SECONDS and prints requests per
second. Figures are printed, not asserted. Run:
.venv/bin/python bench/reduce_speed.py [FILES] [SECONDS] [JOBS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.fuzz import fuzz  # noqa: E402
from inspector.reduce import reduce_trace  # noqa: E402
from inspector.running import recorded_server  # noqa: E402
from traces import Kind, TraceReader  # noqa: E402

PT = [sys.executable, "-m", "inspector.passthroughfs"]


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    jobs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src, mnt = base / "src", base / "mnt"
        src.mkdir()
        mnt.mkdir()
        trace = base / "long.fzt"
        server = [*PT, "--misbehave", "crash-long-name", "-o", "attr_timeout=0", str(src),
                  str(mnt)]
        with recorded_server(server, mnt, trace, "-s", "0") as rec:
            for i in range(files):
                (mnt / f"f{i}").write_bytes(b"x" * i)
                os.stat(mnt / f"f{i}")
            try:
                os.stat(mnt / ("n" * 220))
            except OSError:
                pass
            rec.proc.wait(60)
        requests = sum(1 for r in TraceReader(trace) if r.kind is Kind.REQUEST)
        t0 = time.perf_counter()
        result = reduce_trace(trace, base / "small.fzt", server, jobs=jobs)
        took = time.perf_counter() - t0
        print(f"reduce: {requests} requests ({result.messages_before} messages) -> "
              f"{result.messages} messages, {result.signature.text()}, {result.replays} "
              f"replays, {took:.1f} s with --jobs {jobs}")
        small = base / "small-src"
        small.mkdir()
        (small / "a").write_bytes(b"alpha")
        sess = base / "s.fzt"
        correct = [*PT, str(small), str(base / "m2")]
        (base / "m2").mkdir()
        with recorded_server(correct, base / "m2", sess, "-s", "0") as rec:
            os.stat(base / "m2" / "a")
            (base / "m2" / "a").read_bytes()
            os.statvfs(base / "m2")
            os.listdir(base / "m2")
            rec.unmount_and_wait()
        counted: list[int] = [0]
        t0 = time.perf_counter()
        fuzz(sess, correct, base / "out", seconds=seconds, seed=1, timeout=3.0,
             on_try=lambda n, _: counted.__setitem__(0, n))
        took = time.perf_counter() - t0
        print(f"fuzz: {counted[0]} requests in {took:.1f} s = {counted[0] / took:.1f} "
              f"requests/s into passthroughfs (one replay each)")


if __name__ == "__main__":
    main()
