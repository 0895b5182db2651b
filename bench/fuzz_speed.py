"""`fusetrace fuzz` tries per second on a live target, on fastpt (bench/fastpt/fastpt.c, C)
and on the bundled passthrough filesystem (Python), the same session for both (needs
root and /dev/fuse: the session is recorded through a real mount).

Targets (issue 23, 2 cores): >= 500 tries/s on fastpt, >= 150 on the bundled server.
Figures are printed, not asserted. Run:
.venv/bin/python bench/fuzz_speed.py [SECONDS] [JOBS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inspector.fuzz import Fuzzer  # noqa: E402
from inspector.testing import recorded_server  # noqa: E402
from record_overhead import build_fastpt  # noqa: E402

PT = [sys.executable, "-m", "inspector.passthroughfs"]
TARGETS = {"fastpt": 500, "passthroughfs": 150}


def record(base: Path) -> tuple[Path, Path, Path]:
    """A small session: lookups, a read, statfs, a listing, mkdir, create, rename, symlink."""
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "a").write_bytes(b"alpha" * 100)
    trace = base / "session.fzt"
    with recorded_server([*PT, str(src), str(mnt)], mnt, trace, "-s", "0") as rec:
        os.stat(mnt / "a")
        (mnt / "a").read_bytes()
        os.statvfs(mnt)
        os.listdir(mnt)
        os.mkdir(mnt / "d")
        (mnt / "d" / "f").write_bytes(b"x")
        os.rename(mnt / "d" / "f", mnt / "d" / "g")
        os.symlink("a", mnt / "s")
        rec.unmount_and_wait()
    pristine = base / "pristine"
    os.rename(src, pristine)
    src.mkdir()
    return trace, pristine, mnt


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    fastpt = build_fastpt()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        trace, pristine, mnt = record(base)
        servers = {"passthroughfs": [*PT, str(pristine), str(mnt)]}
        if fastpt is not None:
            servers = {"fastpt": [str(fastpt), str(pristine), str(mnt)], **servers}
        for name, server in servers.items():
            fz = Fuzzer(trace, server, base / f"out-{name}", seed=1, jobs=jobs,
                        fresh=str(pristine))
            fz.run(seconds)
            rate = fz.stats.rate()
            print(f"{name}: {rate:.0f} tries/s with --jobs {jobs} (target >= {TARGETS[name]}: "
                  f"{'met' if rate >= TARGETS[name] else 'NOT met'}); {fz.stats.line()}")


if __name__ == "__main__":
    main()
