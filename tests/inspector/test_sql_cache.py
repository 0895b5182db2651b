"""`fusetrace sql` keeps each trace's tables as Parquet (beside the trace, else in the cache
home, else for the run only) and builds them again when the trace changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from traces.testing import synthetic_trace

REPO = Path(__file__).resolve().parents[2]
SMALL_DISK = 4 << 20


def sql(query: str, *sources: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "inspector.cli", "sql", "--csv", "-e",
                           query, *map(str, sources)], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, **env})


def _files(directory: Path) -> dict[str, Any]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_built_once_and_again_when_the_trace_changes(tmp_path: Path) -> None:
    trace = tmp_path / "t.fzt"
    synthetic_trace(trace, 2_000, seed=4)
    first = sql("SELECT records FROM traces", trace)
    assert first.stdout == "records\n2000\n", first.stderr
    cache = tmp_path / "t.fzt.tables"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    built = _files(cache)
    assert "exchanges.parquet" in built and "meta.json" in built
    assert sql("SELECT records FROM traces", trace).stdout == "records\n2000\n"
    assert _files(cache) == built  # read, not built again

    synthetic_trace(trace, 3_000, seed=4)  # the same name, another trace
    assert sql("SELECT records FROM traces", trace).stdout == "records\n3000\n"
    assert json.loads((cache / "meta.json").read_text())["size"] == trace.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.fzt", "t.fzt.tables"]  # nothing left behind


def test_a_cut_trace_says_so_each_time(tmp_path: Path) -> None:
    whole = tmp_path / "w.fzt"
    synthetic_trace(whole, 2_000, seed=4)
    cut = tmp_path / "cut.fzt"
    cut.write_bytes(whole.read_bytes()[:100_000])
    runs = [sql("SELECT records FROM traces", cut) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and runs[0].stderr == runs[1].stderr
    assert "trace cut at byte" in runs[1].stderr and "is damaged" in runs[1].stderr


def test_a_read_only_trace_directory(small_disk: Path, tmp_path: Path) -> None:
    """The cache goes to the cache home; with that read-only too, to a directory that
    is gone when `sql` ends."""
    trace = small_disk / "ro.fzt"
    synthetic_trace(trace, 2_000, seed=4)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True, timeout=30)
    home = tmp_path / "cache"
    res = sql("SELECT records FROM traces", trace, XDG_CACHE_HOME=str(home))
    assert res.stdout == "records\n2000\n", res.stderr
    [kept] = (home / "fusetrace").glob("*-ro.fzt.tables")
    assert (kept / "exchanges.parquet").is_file()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    res = sql("SELECT records FROM traces", trace, XDG_CACHE_HOME=str(small_disk / "c"),
              TMPDIR=str(scratch))
    assert res.stdout == "records\n2000\n", res.stderr
    assert list(scratch.iterdir()) == []
