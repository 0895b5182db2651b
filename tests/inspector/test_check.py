"""`fusetrace check`, `follow` and `stats` on sessions recorded live: each passthrough
misbehaviour of the bundled server is recorded through `fusetrace record` and must be
named by its anomaly code, with nothing else wrong (clean sessions of every recorded
server are checked in `record_support.check_trace`)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from inspector.lifecycles import analyse
from inspector.testing import recorded_server
from private_host import give_to_nobody
from record_support import PASSTHROUGHFS, fusetrace, mount_test, need, record_as_nobody

if TYPE_CHECKING:
    from conftest import FsDirs

MiB = 1 << 20


def _read(mnt: Path) -> None:
    assert (mnt / "f").read_bytes() == (mnt.parent / "source" / "f").read_bytes()


def _open_fails_with_eio(mnt: Path) -> None:
    with pytest.raises(OSError) as exc:
        (mnt / "f").read_bytes()
    assert exc.value.errno == errno.EIO


def _two_opens_at_once(mnt: Path) -> None:
    with open(mnt / "f", "rb") as first:
        with pytest.raises(OSError) as exc:
            open(mnt / "f", "rb")
        assert exc.value.errno == errno.EIO
        first.read()


def _record_misbehaving(fs_dirs: FsDirs, trace: Path, switch: str,
                        workload: Callable[[Path], None]) -> None:
    (fs_dirs.source / "f").write_bytes(os.urandom(MiB))
    argv = [*PASSTHROUGHFS, "--misbehave", switch, str(fs_dirs.source), str(fs_dirs.mountpoint)]
    with recorded_server(argv, fs_dirs.mountpoint, trace) as rec:
        workload(fs_dirs.mountpoint)
        assert rec.unmount_and_wait() == 0, rec.output()


def _codes(trace: Path) -> dict[str, list[Any]]:
    """`fusetrace check --json`: anomaly code → records, from the real command line."""
    done = fusetrace("check", "--json", str(trace))
    report = json.loads(done.stdout)
    assert done.returncode == (1 if report["failed"] else 0), done.stderr
    found: dict[str, list[Any]] = {}
    for a in report["anomalies"]:
        if a["severity"] != "note":
            found.setdefault(a["code"], []).append(a["records"])
    return found


MISBEHAVIOURS = [
    ("leak-backing-id", _read, {"backing-leak"}),
    ("close-twice", _read, {"backing-close-twice"}),
    ("unknown-backing-id", _open_fails_with_eio, {"backing-unknown-id"}),
    ("passthrough-no-flag", _read, {"passthrough-id-without-flag"}),
    ("direct-io-passthrough", _read, {"passthrough-direct-io"}),
    ("writeback-cache", _read, {"init-passthrough-off", "backing-eperm-writeback"}),
    ("per-open-backing-id", _two_opens_at_once, {"passthrough-conflicting-ids"}),
    ("no-release-reply", _read, {"request-unanswered"}),
]


@mount_test
@pytest.mark.parametrize(("switch", "workload", "expected"), MISBEHAVIOURS,
                         ids=[m[0] for m in MISBEHAVIOURS])
def test_each_misbehaviour_is_named(isolated: Path, fs_dirs: FsDirs, switch: str,
                                    workload: Callable[[Path], None], expected: set[str]) -> None:
    trace = isolated / "t.fzt"
    _record_misbehaving(fs_dirs, trace, switch, workload)
    found = _codes(trace)
    assert set(found) == expected, found
    for records in found.values():
        assert records and all(isinstance(r, int) for r in records[0])


@mount_test
def test_leak_followed_from_ioctl_to_verdict(isolated: Path, fs_dirs: FsDirs) -> None:
    trace = isolated / "t.fzt"
    _record_misbehaving(fs_dirs, trace, "leak-backing-id", _read)
    analysis = analyse(trace)
    [backing] = analysis.lifecycles("backing")
    assert [e.what for e in backing.events] == ["BACKING_OPEN", "OPEN reply", "RELEASE"]
    assert backing.verdict == "leaked" and backing.label == str(fs_dirs.source / "f")
    [leak] = backing.anomalies
    assert leak.code == "backing-leak" and leak.records == tuple(backing.records)

    done = fusetrace("follow", str(trace), "--backing-id", str(backing.key))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"backing id {backing.key}: {fs_dirs.source / 'f'}"
    assert "FUSE_DEV_IOC_BACKING_OPEN" in done.stdout and "backing_id=" in done.stdout
    assert "  verdict: leaked (state: open)" in lines
    assert "backing-leak" in done.stdout

    # the file handle that carried it was released properly
    [fh] = [lc for lc in analysis.lifecycles("fh") if lc.key == int(
        backing.events[1].detail.split("fh=")[1].split()[0], 16)]
    assert fh.verdict == "closed properly" and fh.state == "released"
    assert ("backing", backing.key) in analysis.subjects_of(backing.events[1].index)

    missing = fusetrace("follow", str(trace), "--backing-id", "999")
    assert missing.returncode == 1 and "no backing id 999 in the trace" in missing.stderr


@mount_test
def test_stats_of_a_recorded_session(isolated: Path, fs_dirs: FsDirs) -> None:
    trace = isolated / "t.fzt"
    _record_misbehaving(fs_dirs, trace, "close-twice", _read)
    done = fusetrace("stats", "--json", str(trace))
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["session"]["dialect"] == "mainline" and "PASSTHROUGH" in stats["session"]["flags"]
    assert stats["opcodes"]["OPEN"]["count"] == 1 and stats["opcodes"]["OPEN"]["p50_ns"] > 0
    assert stats["opcodes"]["LOOKUP"]["count"] >= 1
    assert "READ" not in stats["opcodes"]  # passthrough: the kernel reads the backing file
    [backing] = stats["backing"]
    assert backing["opens"] == 1 and backing["lifetime_ns"] > 0
    text = fusetrace("stats", str(trace))
    assert text.returncode == 0 and "OPEN" in text.stdout and "backing id" in text.stdout


@pytest.mark.timeout(60)
def test_eperm_without_cap_sys_admin_is_told_apart(requires_fuse: None, nobody_dir: Path) -> None:
    """As an ordinary user passthrough is negotiated, yet BACKING_OPEN fails with EPERM:
    the same errno as a connection without passthrough, and the trace tells which."""
    need("fusermount3")
    src, mnt, trace = nobody_dir / "source", nobody_dir / "mnt", nobody_dir / "t.fzt"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    give_to_nobody(src, src / "f")
    [seen], unmounted, (code, err) = record_as_nobody(
        [*PASSTHROUGHFS, str(src), str(mnt)], mnt, trace, ["cat", str(mnt / "f")])
    assert seen.stdout == "data\n" and unmounted.returncode == 0 and code == 0, (seen, err)
    found = _codes(trace)
    assert set(found) == {"backing-eperm-no-cap"}, found
    message = next(a.message for a in analyse(trace).anomalies)
    assert "lacks CAP_SYS_ADMIN" in message and str(src / "f") in message


def test_unreadable_trace_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fzt"
    bad.write_bytes(b"not a trace at all")
    for command in ("check", "stats"):
        done = fusetrace(command, str(bad))
        assert done.returncode == 2 and done.stderr.startswith("fusetrace: error:"), done.stderr
        assert "Traceback" not in done.stderr
