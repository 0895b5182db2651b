"""`fusetrace fuzz` against the bundled passthrough filesystem: each planted bug
(`--misbehave`) is found from several seeds within a bounded mean of tries, and saved
reduced with a command that reproduces it; the correct server, with a busy process
beside it, gives nothing; `--fresh` keeps the source directory as it was."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.fuzz import Fuzzer, Stats
from inspector.testing import fuse_available, recorded_server, tree
from record_support import PASSTHROUGHFS
from traces import Kind, TraceReader

SEEDS = range(1, 6)
LIMIT = 5000  # tries per seed at most
#: bug → (what the finding says, the largest mean of tries to find it that passes);
#: measured: crash-long-name 2-13 tries, short-statfs 0 (the recording itself has a
#: STATFS), hang-append 139-631 (an OPEN with O_APPEND among 17 open flags)
BUGS = {"crash-long-name": ("killed", 100), "short-statfs": ("refused", 10),
        "hang-append": ("hung", 1500)}


def _server(src: Path, *bugs: str) -> list[str]:
    extra = [a for bug in bugs for a in ("--misbehave", bug)]
    return [*PASSTHROUGHFS, *extra, str(src), str(src.parent / "mnt")]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    base = tmp_path_factory.mktemp("fuzz")
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "a").write_bytes(b"alpha")
    trace = base / "t.fzt"
    with recorded_server(_server(src), mnt, trace, "-s", "0") as rec:
        os.stat(mnt / "a")
        with open(mnt / "a", "rb") as f:
            f.read()
        os.statvfs(mnt)
        os.listdir(mnt)
        os.mkdir(mnt / "d")
        (mnt / "d" / "f").write_bytes(b"x")
        os.rename(mnt / "d" / "f", mnt / "d" / "g")
        os.symlink("a", mnt / "s")
        assert rec.unmount_and_wait() == 0, rec.output()
    return trace, src


def _until_found(fz: Fuzzer) -> None:
    def check(stats: Stats) -> None:
        if fz.found:
            fz.stop.set()
    fz.run(300, LIMIT, check)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("bug", list(BUGS))
def test_each_planted_bug_is_found_from_several_seeds(session: tuple[Path, Path],
                                                      tmp_path: Path, bug: str) -> None:
    trace, src = session
    verdict, bound = BUGS[bug]
    tries = []
    for seed in SEEDS:
        fz = Fuzzer(trace, _server(src, bug), tmp_path / f"out{seed}", seed=seed, fresh=str(src))
        _until_found(fz)
        assert fz.found, (seed, fz.stats.line())
        hit = fz.found[0]
        assert hit.outcome.verdict.value == verdict, hit.outcome.text()
        tries.append(hit.tries)
        kept = [r for r in TraceReader(hit.trace) if r.kind in (Kind.REQUEST, Kind.REPLY)]
        assert len(kept) <= 12, hit.trace
        assert hit.command.startswith("fusetrace fuzz ") and " --check " in hit.command
    assert statistics.mean(tries) <= bound, tries


def test_the_correct_server_under_load_gives_nothing(session: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    trace, src = session
    before = tree(src)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        fz = Fuzzer(trace, _server(src), tmp_path / "out", seed=7, jobs=2, fresh=str(src),
                    timeout=0.2)
        started = time.monotonic()
        assert fz.run(40, 6000) == [], fz.stats.line()
    finally:
        busy.kill()
        busy.wait()
    assert fz.stats.tries >= 1000 or time.monotonic() - started >= 40
    assert not list((tmp_path / "out").iterdir())
    assert tree(src) == before  # --fresh: the source is never written
