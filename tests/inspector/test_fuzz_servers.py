"""`fusetrace fuzz`: with a fixed seed it finds each seeded bug of the bundled passthrough
filesystem within a bounded number of requests, reduced; on the correct server nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inspector.fuzz import fuzz
from inspector.fuzz.verdict import fixed_reply_size
from inspector.testing import fuse_available, recorded_server
from dissectors.constants import Opcode
from record_support import PASSTHROUGHFS
from traces import Kind, TraceReader

TRIES = 60


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
        assert rec.unmount_and_wait() == 0, rec.output()
    return trace, src


@pytest.mark.parametrize("bug, expect", [
    ("crash-long-name", "SIGABRT"),
    ("short-statfs", "STATFS reply body of 76 bytes"),
    ("hang-append", "hangs on it"),
])
def test_each_seeded_bug_is_found_and_reduced(session: tuple[Path, Path], tmp_path: Path,
                                              bug: str, expect: str) -> None:
    trace, src = session
    found = fuzz(trace, _server(src, bug), tmp_path / "out", seconds=120, seed=1,
                 max_tries=TRIES, timeout=3.0)
    hits = [f for f in found if expect in f.what]
    assert hits, [f.what for f in found]
    small = [r for r in TraceReader(hits[0].trace) if r.kind in (Kind.REQUEST, Kind.REPLY)]
    assert len(small) <= 8
    text = (tmp_path / "out" / hits[0].trace.with_suffix(".txt").name).read_text()
    assert "fusetrace replay" in text.splitlines()[1]


def test_the_correct_server_gives_nothing(session: tuple[Path, Path], tmp_path: Path) -> None:
    trace, src = session
    assert fuzz(trace, _server(src), tmp_path / "out", seconds=120, seed=1, max_tries=TRIES,
                timeout=3.0) == []


def test_fixed_reply_sizes_come_from_the_dissectors() -> None:
    assert fixed_reply_size(Opcode.STATFS) == 80
    assert fixed_reply_size(Opcode.READ) is None
