"""`fusetrace reduce` speed against the bundled passthrough filesystem (needs root and
/dev/fuse: the session is recorded through a real mount). Fuzz speed: bench/fuzz_speed.py.

Records a session of FILES create/write/stat rounds that ends with a name one byte over
`--misbehave crash-long-name`'s limit, which crashes the server, and reduces it
(printing requests before, messages after, replays, seconds). Figures are printed, not
asserted. Run:
.venv/bin/python bench/reduce_speed.py [FILES] [JOBS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.passthroughfs.misbehave import LONG_NAME  # noqa: E402
from inspector.reduce import reduce_trace  # noqa: E402
from inspector.running import recorded_server  # noqa: E402
from traces import Kind, TraceReader  # noqa: E402

PT = [sys.executable, "-m", "inspector.passthroughfs"]


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
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
                os.stat(mnt / ("n" * (LONG_NAME + 1)))
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


if __name__ == "__main__":
    main()
