"""`fusetrace sql` and `export --parquet` on a session recorded for real: the bundled
passthroughfs (passthrough ioctls through the trap) under `fusetrace record`, running the
demo's workload. `sql` over the trace, and a DuckDB of the test's own reading the Parquet
export, count every opcode, reply and ioctl exactly as `fusetrace show` lists them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from inspector.demo import workload
from inspector.exchange.trap import IoctlTrap
from inspector.testing import recorded_server

from record_support import PASSTHROUGHFS, REPO, fusetrace, mount_test

if TYPE_CHECKING:
    from conftest import FsDirs


def sql_json(query: str, *sources: Path) -> list[dict[str, Any]]:
    res = fusetrace("sql", "--json", "-e", query, *map(str, sources))
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def shown(trace: Path) -> dict[str, Counter[str]]:
    """What `fusetrace show` lists: requests by opcode, replies and notifications by the
    name they show, ioctls by name."""
    res = fusetrace("show", str(trace))
    assert res.returncode == 0, res.stderr
    out: dict[str, Counter[str]] = {"->": Counter(), "<-": Counter(), "io": Counter()}
    for line in res.stdout.splitlines():
        _, _, arrow, text = line.split(None, 3)
        if arrow in out:
            out[arrow][text.split()[0]] += 1
    return out


# The three counts, as SQL over the tables (`?` is how show names a reply to no request)
REQUESTS = "SELECT opcode AS k, count(*) AS n FROM {t} WHERE record IS NOT NULL GROUP BY 1"
REPLIES = ("SELECT coalesce(opcode, '?') AS k, count(*) AS n FROM {t} "
           "WHERE reply_record IS NOT NULL GROUP BY 1 "
           "UNION ALL SELECT notify, count(*) FROM {n} GROUP BY 1")
IOCTLS = "SELECT ioctl AS k, count(*) AS n FROM {i} GROUP BY 1"


def _counts(rows: list[Any]) -> Counter[str]:
    return Counter({k: n for k, n in rows})


@mount_test
def test_sql_and_parquet_count_what_show_lists(isolated: Path, fs_dirs: FsDirs) -> None:
    reason = IoctlTrap.available()
    src, mnt = fs_dirs
    (src / "existing.txt").write_text("was here before the mount\n")
    trace = isolated / "session.fzt"
    with recorded_server([*PASSTHROUGHFS, str(src), str(mnt)], mnt, trace, cwd=REPO) as rec:
        workload(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    listed = shown(trace)
    assert listed["->"]["OPEN"] and listed["->"]["LOOKUP"] and listed["<-"]["OPEN"]
    if reason is None:  # the trap works here: the passthrough ioctls are in the trace
        assert listed["io"]["FUSE_DEV_IOC_BACKING_OPEN"] >= 1

    names = {"t": "exchanges", "n": "notifications", "i": "ioctls"}
    for query, key in ((REQUESTS, "->"), (REPLIES, "<-"), (IOCTLS, "io")):
        rows = sql_json(query.format(**names), trace)
        assert _counts([(r["k"], r["n"]) for r in rows]) == listed[key], key

    out = isolated / "dataset"
    res = fusetrace("export", "--parquet", str(out), str(trace))
    assert res.returncode == 0 and not res.stderr, res.stderr
    con = duckdb.connect()
    tables = {key: f"read_parquet('{out}/{table}/*/*.parquet', hive_partitioning = true)"
              for key, table in names.items()}
    for query, key in ((REQUESTS, "->"), (REPLIES, "<-"), (IOCTLS, "io")):
        assert _counts(con.sql(query.format(**tables)).fetchall()) == listed[key], key
    assert con.sql(f"SELECT DISTINCT trace FROM {tables['t']}").fetchall() == [("session",)]

    # the session ended by the unmount, and the lifecycle pass saw every backing id closed
    [row] = sql_json("SELECT end_reason, cut, dialect FROM traces", trace)
    assert row == {"end_reason": "unmounted", "cut": None,
                   "dialect": "mainline" if reason is None else row["dialect"]}
    leaked = sql_json("SELECT key FROM lifecycles WHERE kind = 'backing' "
                      "AND verdict = 'leaked'", trace)
    assert leaked == []
