"""`fusetrace replay` with real parts: sessions recorded through the proxy from the pyfuse3
memfs, the project's passthrough filesystem (passthrough on) and Debian's fuse-overlayfs,
replayed against fresh instances of the same servers with nothing mounted.

Each trace is recorded once per module; every replay gets a fresh copy of the source
directory as it was before the recording.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from dissectors import Message
from dissectors.constants import READ_ONLY_OPCODES, Opcode
from dissectors.ioctls import DevIoctl
from inspector.replay import End, Masks, Outcome, ReplayReport, replay
from inspector.replay.engine import PIPELINE, Replayer
from inspector.replay.hidden import WHY
from inspector.syscalls import mount, umount2
from inspector.testing import decode_trace, fuse_available, recorded_server, tree
from record_support import (
    AS_NOBODY,
    MEMFS,
    PASSTHROUGHFS,
    REPO,
    blob,
    dev_fuse_mode,
    fusetrace,
    make_source,
    outcome,
    read_uncached,
    rw_workload,
)

CRASHFS = [sys.executable, "-X", "faulthandler", str(REPO / "tests" / "servers" / "crashfs.py")]


@dataclass
class Recorded:
    """A trace and how to start a fresh server for it."""

    trace: Path
    pristine: Path | None  # the source directory as it was before recording
    argv: Callable[[Path, Path], list[str]]  # (fresh source, mountpoint) → server argv

    def fresh(self, where: Path, *extra: str) -> list[str]:
        """A server command line on a fresh copy of the source, under `where`."""
        where.mkdir(parents=True, exist_ok=True)
        src = where / "src"
        if self.pristine is not None:
            shutil.copytree(self.pristine, src, symlinks=True)
        (where / "mnt").mkdir(exist_ok=True)
        return [*self.argv(src, where / "mnt"), *extra]


def _record(base: Path, argv: Callable[[Path, Path], list[str]], workload: Callable[[Path], object],
            fill: Callable[[Path], None] | None) -> Recorded:
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    pristine = None
    if fill is not None:
        pristine = base / "pristine"
        pristine.mkdir()
        fill(pristine)
    src, mnt = base / "rec" / "src", base / "rec" / "mnt"
    mnt.mkdir(parents=True)
    if pristine is not None:
        shutil.copytree(pristine, src, symlinks=True)
    trace = base / "t.fzt"
    with recorded_server(argv(src, mnt), mnt, trace, "-s", "0") as rec:
        workload(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    return Recorded(trace, pristine, argv)


def _memfs(src: Path, mnt: Path) -> list[str]:
    return [*MEMFS, str(mnt)]


def _passthroughfs(src: Path, mnt: Path) -> list[str]:
    return [*PASSTHROUGHFS, "-o", "attr_timeout=0", str(src), str(mnt)]


def _pt_source(src: Path) -> None:
    (src / "dir").mkdir()
    (src / "dir" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (src / "b.bin").write_bytes(blob(300_000))
    (src / "full").mkdir()
    (src / "full" / "x").write_bytes(b"x")
    os.symlink("dir/a.txt", src / "link")


def _pt_workload(m: Path) -> None:
    """Reads through passthrough and metadata changes: what passthrough writes would put in
    a file never reaches the server, so a replay could not reproduce it."""
    tree(m)
    read_uncached(m / "b.bin")
    os.stat(m / "b.bin")
    with open(m / "dir" / "a.txt", "rb") as one, open(m / "b.bin", "rb") as two:
        one.read(10)
        two.read(10)
    outcome(os.rmdir, m / "full")
    os.rename(m / "dir" / "a.txt", m / "dir" / "c.txt")
    os.chmod(m / "dir" / "c.txt", 0o640)
    os.truncate(m / "b.bin", 1000)
    os.symlink("b.bin", m / "l2")
    os.link(m / "b.bin", m / "hard")
    os.unlink(m / "hard")
    os.mkdir(m / "new")
    os.rmdir(m / "new")
    (m / "empty").touch()
    outcome(open, m / "missing")
    tree(m)


def _overlayfs(root: Path, mnt: Path) -> list[str]:
    for sub in ("upper", "work"):
        (root.parent / sub).mkdir(exist_ok=True)
    return ["fuse-overlayfs", "-f", "-o", f"lowerdir={root},upperdir={root.parent / 'upper'},"
            f"workdir={root.parent / 'work'}", str(mnt)]


def _overlay_workload(m: Path) -> None:
    tree(m)
    read_uncached(m / "big")
    (m / "dir" / "small.txt").read_bytes()
    os.readlink(m / "link")
    outcome(open, m / "missing")
    (m / "dir" / "small.txt").write_bytes(b"copied up\n")  # copy-up to the upper layer
    (m / "rw").mkdir()
    rw_workload(m / "rw", xattrs=False)


@pytest.fixture(scope="module")
def memfs_trace(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return _record(tmp_path_factory.mktemp("memfs"), _memfs, rw_workload, None)


@pytest.fixture(scope="module")
def passthrough_trace(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return _record(tmp_path_factory.mktemp("passthroughfs"), _passthroughfs, _pt_workload, _pt_source)


@pytest.fixture(scope="module")
def overlay_trace(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    if shutil.which("fuse-overlayfs") is None:
        pytest.skip("not installed: fuse-overlayfs")
    return _record(tmp_path_factory.mktemp("overlay"), _overlayfs, _overlay_workload, make_source)


def _records(trace: Path, want: Callable[[Message], bool], replies: bool = True) -> list[int]:
    """Record indices of the requests (or their replies) the predicate picks."""
    entries = decode_trace(trace).entries
    picked, out = set(), []
    for e in entries:
        msg = e.decoded
        if not isinstance(msg, Message):
            continue
        if e.record.is_request and want(msg):
            picked.add(msg.brief.unique)
            if not replies:
                out.append(e.record.index)
        elif replies and e.record.is_reply and msg.brief.unique in picked:
            out.append(e.record.index)
            picked.discard(msg.brief.unique)
    return out


# --- the same server, zero differences ---------------------------------------------------

@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_memfs_replays_without_differences(memfs_trace: Recorded, tmp_path: Path) -> None:
    report = replay(memfs_trace.trace, memfs_trace.fresh(tmp_path))
    assert report.ok, report.text()
    assert report.counts["replies"] > 100
    assert report.server_exit == "exited with status 0"


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_passthroughfs_replays_without_differences(passthrough_trace: Recorded, tmp_path: Path) -> None:
    written = tmp_path / "replayed.fzt"
    report = replay(passthrough_trace.trace, passthrough_trace.fresh(tmp_path), write=written)
    assert report.ok, report.text()
    recorded = [e.record for e in decode_trace(passthrough_trace.trace).entries if e.record.is_ioctl]
    assert any(r.meta["cmd"] == DevIoctl.BACKING_OPEN and r.meta["errno"] == 0 for r in recorded)
    assert report.counts["ioctls"] == sum(r.meta["cmd"] in (DevIoctl.BACKING_OPEN,
                                                             DevIoctl.BACKING_CLOSE) for r in recorded)
    # the replayed conversation, as a trace: the emulated ids 1, 2, 3 … in order
    replayed = decode_trace(written)
    assert replayed.tail is None and replayed.header["source"] == "replay"
    ids = [e.record.meta["result"] for e in replayed.entries
           if e.record.is_ioctl and e.record.meta["cmd"] == DevIoctl.BACKING_OPEN]
    assert ids == list(range(1, len(ids) + 1)) and ids
    # ended as the recording was, by an unmount: no DESTROY (the kernel sends none to a fuse mount)
    assert sum(e.record.is_request for e in replayed.entries) == report.counts["requests"]


def _stable(report: ReplayReport) -> str:
    """The report but its counts of masked differences: how many times a masked clock
    differed depends on when each second turned (a ctime equal by chance hides nothing)."""
    lines = [line for line in report.text().splitlines()
             if not line.startswith("differences hidden by masks:")]
    return "\n".join(lines) + repr({k: v for k, v in report.json().items() if k != "hidden"})


@pytest.mark.requires_fuse
@pytest.mark.timeout(400)
@pytest.mark.parametrize("which", ["memfs", "passthrough"])
def test_twenty_runs_give_identical_reports(which: str, request: pytest.FixtureRequest,
                                            tmp_path: Path) -> None:
    rec: Recorded = request.getfixturevalue(f"{which}_trace")
    reports = set()
    for _ in range(20):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)  # the same paths every run
        report = replay(rec.trace, rec.fresh(tmp_path / "run"))
        assert report.ok, report.text()
        reports.add(_stable(report))
    assert len(reports) == 1


def _passthroughfs_plain(src: Path, mnt: Path) -> list[str]:
    return [*_passthroughfs(src, mnt), "--no-passthrough"]


def _concurrent_reads(m: Path) -> None:
    """Four readers at once, so the kernel has several requests out at a time."""
    def reader() -> None:
        for _ in range(15):
            for name in ("dir/a.txt", "b.bin", "link"):
                os.stat(m / name)
                read_uncached(m / name)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _most_outstanding(trace: Path) -> int:
    """The most requests a trace shows waiting for their replies at one time."""
    waiting: set[int] = set()
    most = 0
    for e in decode_trace(trace).entries:
        if not isinstance(e.decoded, Message) or not e.decoded.brief.unique:
            continue
        brief = e.decoded.brief
        if e.record.is_request and brief.opcode not in (Opcode.FORGET, Opcode.BATCH_FORGET):
            waiting.add(brief.unique)
            most = max(most, len(waiting))
        elif e.record.is_reply:
            waiting.discard(brief.unique)
    return most


@pytest.mark.requires_fuse
@pytest.mark.timeout(180)
def test_overlap_replays_the_recorded_concurrency(tmp_path: Path) -> None:
    """`overlap` sends requests where the trace had them, several out at once; `serial`
    sends one at a time; the default pipelines read-only requests, never more than
    PIPELINE at once. All find no differences on a multi-threaded server."""
    (tmp_path / "rec").mkdir()
    rec = _record(tmp_path / "rec", _passthroughfs_plain, _concurrent_reads, _pt_source)
    assert _most_outstanding(rec.trace) > 1, "the recording should hold concurrent requests"
    overlapped, serial, piped = tmp_path / "overlap.fzt", tmp_path / "serial.fzt", tmp_path / "p.fzt"
    report = replay(rec.trace, rec.fresh(tmp_path / "a"), overlap=True, write=overlapped)
    assert report.ok, report.text()
    assert _most_outstanding(overlapped) > 1
    report = replay(rec.trace, rec.fresh(tmp_path / "b"), serial=True, write=serial)
    assert report.ok, report.text()
    assert _most_outstanding(serial) == 1
    report = replay(rec.trace, rec.fresh(tmp_path / "c"), write=piped)
    assert report.ok, report.text()
    assert 1 < _most_outstanding(piped) <= PIPELINE
    assert _alone_unless_read_only(piped)


def _alone_unless_read_only(trace: Path) -> bool:
    """Whether every request that may change something was out alone in a trace."""
    out: dict[int, int] = {}
    for e in decode_trace(trace).entries:
        if not isinstance(e.decoded, Message) or not e.decoded.brief.unique:
            continue
        brief = e.decoded.brief
        if e.record.is_request and brief.opcode not in (Opcode.FORGET, Opcode.BATCH_FORGET):
            out[brief.unique] = brief.opcode
            if len(out) > 1 and not all(op in READ_ONLY_OPCODES for op in out.values()):
                return False
        elif e.record.is_reply:
            out.pop(brief.unique, None)
    return True


@pytest.mark.requires_fuse
@pytest.mark.timeout(180)
def test_overlayfs_on_a_fresh_copy_differs_only_in_masked_fields(overlay_trace: Recorded,
                                                                 tmp_path: Path) -> None:
    report = replay(overlay_trace.trace, overlay_trace.fresh(tmp_path))
    assert report.ok, report.text()
    assert report.counts["notifications"] > 0  # fuse-overlayfs invalidates entries
    # the default masks are what made it equal: without them, times and inode numbers differ
    bare = replay(overlay_trace.trace, overlay_trace.fresh(tmp_path / "bare"),
                  masks=Masks(defaults=False))
    assert not bare.ok
    paths = {f.path.rsplit(".", 1)[-1] for d in bare.differences for f in d.fields}
    assert paths <= {"ino", "atime", "mtime", "ctime", "atimensec", "mtimensec", "ctimensec",
                     "generation", "bfree", "bavail", "ffree"}, paths


# --- seeded bugs, pinned to their record --------------------------------------------------

def _is_file_getattr(msg: Message) -> bool:
    return msg.brief.opcode == Opcode.GETATTR


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_wrong_size_is_pinned_to_the_first_file_getattr(passthrough_trace: Recorded,
                                                       tmp_path: Path) -> None:
    report = replay(passthrough_trace.trace,
                    passthrough_trace.fresh(tmp_path, "--misbehave", "wrong-size"))
    assert not report.ok and report.error is None
    first = report.differences[0]
    entries = decode_trace(passthrough_trace.trace).entries
    sizes = {e.record.index: e.decoded for e in entries if e.record.is_reply}
    file_getattrs = [i for i in _records(passthrough_trace.trace, _is_file_getattr)
                     if (sizes[i].brief.get("attr.mode") or 0) & 0o170000 == 0o100000]
    assert first.record == file_getattrs[0]
    [field] = first.fields
    assert field.path == "fuse_attr_out.attr.size"
    assert int(field.replayed) == int(field.recorded) + 1
    # `empty` is created (opened for writing) through passthrough: its size is not
    # compared from then on, and the report counts what that hid
    differing = {d.record for d in report.differences}
    assert differing <= set(file_getattrs)
    assert len(set(file_getattrs) - differing) == report.hidden[WHY] > 0
    assert "fuse_attr_out.attr.size" in report.first_difference_text()


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_replies_compared_as_bytes_give_the_same_report(passthrough_trace: Recorded,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut (`fast`: fixed-struct replies compared byte for byte) changes how soon a
    report is made, never what it says: the same differences as comparing every reply
    field by field."""
    argv = ["--misbehave", "wrong-size"]
    quick = replay(passthrough_trace.trace, passthrough_trace.fresh(tmp_path / "a", *argv))
    monkeypatch.setattr(Replayer, "_compare_fast", lambda self, ex, raw: False)
    full = replay(passthrough_trace.trace, passthrough_trace.fresh(tmp_path / "b", *argv))
    def said(report: ReplayReport) -> object:
        return (report.counts, set(report.hidden), [
            (d.record, d.what, d.message, d.summary, d.fields) for d in report.differences])

    assert quick.differences and said(quick) == said(full)


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_wrong_errno_is_pinned_to_the_rmdir_reply(passthrough_trace: Recorded, tmp_path: Path) -> None:
    report = replay(passthrough_trace.trace,
                    passthrough_trace.fresh(tmp_path, "--misbehave", "wrong-errno"))
    rmdir_full = _records(passthrough_trace.trace, lambda m: m.brief.opcode == Opcode.RMDIR
                          and m.brief.get("name") == b"full")
    [diff] = report.differences
    assert diff.record == rmdir_full[0]
    assert [(f.path, f.recorded, f.replayed) for f in diff.fields] == [
        ("error", "-39 (Directory not empty)", "-17 (File exists)")]


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_forgotten_backing_close_is_pinned_to_each_recorded_close(passthrough_trace: Recorded,
                                                                 tmp_path: Path) -> None:
    report = replay(passthrough_trace.trace,
                    passthrough_trace.fresh(tmp_path, "--misbehave", "leak-backing-id"))
    closes = [e.record.index for e in decode_trace(passthrough_trace.trace).entries
              if e.record.is_ioctl and e.record.meta["cmd"] == DevIoctl.BACKING_CLOSE]
    assert closes
    assert [(d.record, d.what) for d in report.differences] == [(i, "missing ioctl") for i in closes]
    assert "FUSE_DEV_IOC_BACKING_CLOSE" in report.differences[0].message


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_reused_file_handle_is_pinned_to_the_second_open(passthrough_trace: Recorded,
                                                        tmp_path: Path) -> None:
    report = replay(passthrough_trace.trace,
                    passthrough_trace.fresh(tmp_path, "--misbehave", "reuse-fh"))
    opens = _records(passthrough_trace.trace, lambda m: m.brief.opcode == Opcode.OPEN)
    first = report.differences[0]
    assert first.what == "reply"
    # a.txt and b.bin open at once: b.bin's OPEN is the first one answered with a handle in use
    a_open = _records(passthrough_trace.trace, lambda m: m.brief.opcode == Opcode.OPEN, replies=False)
    assert first.record in opens and first.record > opens[0] and a_open
    [field] = [f for f in first.fields if f.path == "fuse_open_out.fh"]
    assert "handed out again while it still stands for recorded file handle" in field.note


# --- hung and crashing servers ------------------------------------------------------------

@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_hung_server_is_reported_with_its_request(passthrough_trace: Recorded, tmp_path: Path) -> None:
    report = replay(passthrough_trace.trace,
                    passthrough_trace.fresh(tmp_path, "--misbehave", "stall=READLINK:30"),
                    timeout=5.0)  # (1 s was too little for the other requests on a loaded machine)
    first_readlink = _records(passthrough_trace.trace, lambda m: m.brief.opcode == Opcode.READLINK,
                              replies=False)[0]
    assert report.error is not None and not report.ok
    assert report.error.startswith("no reply to READLINK")
    assert f"(record {first_readlink}) within 5 s: the server hangs on it" in report.error
    assert report.outcome == Outcome(End.NO_REPLY, seconds=5.0, record=first_readlink,
                                     opcode=Opcode.READLINK)


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_crashing_server_is_reported_with_the_request_it_crashed_on(memfs_trace: Recorded,
                                                                   tmp_path: Path) -> None:
    argv = [*CRASHFS, str(tmp_path)]
    report = replay(memfs_trace.trace, argv)
    first_rmdir = _records(memfs_trace.trace, lambda m: m.brief.opcode == Opcode.RMDIR, replies=False)[0]
    assert report.error is not None
    assert report.error.startswith("the server killed by SIGABRT while handling RMDIR")
    assert f"(record {first_rmdir})" in report.error
    text = report.text()
    assert "no differences" not in text
    assert "result: the replay did not finish" in text
    # the end of its stderr, where faulthandler names the function it died in
    assert "the server's last output:" in text and "in rmdir" in text
    res = fusetrace("replay", str(memfs_trace.trace), "--", *argv)
    assert res.returncode == 2
    assert "error: the server killed by SIGABRT while handling RMDIR" in res.stderr
    assert "no differences" not in res.stdout and "in rmdir" in res.stdout
    as_json = fusetrace("replay", str(memfs_trace.trace), "--json", "--", *argv)
    assert as_json.returncode == 2 and '"ok": false' in as_json.stdout
    assert "in rmdir" in as_json.stdout


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_libfuse_server_ends_as_the_recording_did(tmp_path: Path) -> None:
    """Recorded until unmounted, squashfuse (libfuse 3) exited 0; replayed, it is told
    of the end the same way (ENODEV on its read), not with end-of-file (exit 8)."""
    for tool in ("squashfuse", "mksquashfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"not installed: {tool}")
    src, image, mnt, trace = (tmp_path / n for n in ("src", "image.sqfs", "mnt", "t.fzt"))
    src.mkdir()
    make_source(src)
    subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-noappend"], check=True,
                   capture_output=True, timeout=60)
    mnt.mkdir()
    argv = ["squashfuse", "-f", str(image), str(mnt)]
    with recorded_server(argv, mnt, trace, "-s", "0") as rec:
        tree(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    report = replay(trace, argv)
    assert report.ok, report.text()
    assert report.server_exit == "exited with status 0"


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_a_different_exit_status_is_a_difference(memfs_trace: Recorded, tmp_path: Path) -> None:
    """The same server behind a shell that exits 3 afterwards: every reply matches, the
    exit does not (recorded 0), pinned to the recording's session_end."""
    memfs = " ".join(MEMFS)
    argv = ["sh", "-c", f'{memfs} "$1"; exit 3', "sh", str(tmp_path)]
    report = replay(memfs_trace.trace, argv)
    assert report.error is None, report.text()
    [diff] = report.differences
    end = [e.record.index for e in decode_trace(memfs_trace.trace).entries
           if e.record.event == "session_end"]
    assert (diff.record, diff.what) == (end[0], "server exit")
    assert [(f.recorded, f.replayed) for f in diff.fields] == [
        ("exited with status 0", "exited with status 3")]
    assert report.server_exit == "exited with status 3"  # ENODEV reached it through the shell


# --- the command line -------------------------------------------------------------------

@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_cli_exit_codes_and_json(passthrough_trace: Recorded, tmp_path: Path) -> None:
    same = fusetrace("replay", str(passthrough_trace.trace), "--json",
                     "--", *passthrough_trace.fresh(tmp_path / "a"))
    assert same.returncode == 0, same.stderr
    assert '"ok": true' in same.stdout
    wrong = fusetrace("replay", str(passthrough_trace.trace), "--",
                      *passthrough_trace.fresh(tmp_path / "b", "--misbehave", "wrong-size"))
    assert wrong.returncode == 1, wrong.stderr
    assert "≠ fuse_attr_out.attr.size" in wrong.stdout
    masked = fusetrace("replay", str(passthrough_trace.trace), "--mask", "GETATTR.attr.size", "--",
                       *passthrough_trace.fresh(tmp_path / "c", "--misbehave", "wrong-size"))
    assert masked.returncode == 0, masked.stdout


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_ordinary_user_replays_without_dev_fuse(nobody_dir: Path) -> None:
    """No root, no access to /dev/fuse: the server only ever talks to the replay's socket."""
    for tool in ("squashfuse", "mksquashfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"not installed: {tool}")
    src, image, mnt, trace = (nobody_dir / n for n in ("src", "image.sqfs", "mnt", "t.fzt"))
    src.mkdir()
    make_source(src)
    subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-noappend"], check=True,
                   capture_output=True, timeout=60)
    image.chmod(0o644)
    mnt.mkdir()
    argv = ["squashfuse", "-f", str(image), str(mnt)]
    with recorded_server(argv, mnt, trace, "-s", "0") as rec:
        tree(mnt)
        read_uncached(mnt / "big")
        assert rec.unmount_and_wait() == 0, rec.output()
    trace.chmod(0o644)
    with dev_fuse_mode(0o600):  # the private namespace's own node (`nobody_dir`)
        res = subprocess.run([*AS_NOBODY, sys.executable, "-m", "inspector.cli", "replay",
                              str(trace), "--", *argv], capture_output=True, text=True,
                             timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "result: no differences" in res.stdout


# --- directories: names, not positions ----------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of this test's own: it lists a directory newest entry first, so the order
    of a listing is the reverse of the order its entries were made in."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    try:
        mount("tmpfs", str(where), "tmpfs", 0, "size=16m")
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    try:
        yield where
    finally:
        umount2(str(where))


_NAMES = ("a", "b", "c", "d")


def _listed_source(src: Path, names: tuple[str, ...]) -> None:
    src.mkdir(parents=True)
    for name in names:
        (src / name).write_bytes(name.encode() * (100 * (ord(name) - 96)))  # sizes differ


def _stat_each(m: Path) -> None:
    for name in sorted(os.listdir(m)):
        os.stat(m / name)
        (m / name).read_bytes()


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_a_listing_in_another_order_pairs_entries_by_name(tmpfs: Path) -> None:
    """Recorded over a directory listed d, c, b, a and replayed over one listed a, b, c, d:
    entries are paired by name (each GETATTR goes to the node of its own name), and the
    order is one masked difference; --strict-order compares positions."""
    rec_src, mnt = tmpfs / "rec", tmpfs / "mnt"
    _listed_source(rec_src, _NAMES)
    mnt.mkdir()
    trace = tmpfs / "t.fzt"
    with recorded_server(_passthroughfs_plain(rec_src, mnt), mnt, trace, "-s", "0") as rec:
        _stat_each(mnt)
        assert rec.unmount_and_wait() == 0, rec.output()
    _listed_source(tmpfs / "rep", _NAMES[::-1])
    argv = _passthroughfs_plain(tmpfs / "rep", mnt)
    report = replay(trace, argv)
    assert report.ok, report.text()
    bare = replay(trace, argv, masks=Masks(defaults=False))
    orders = [(f.recorded, f.replayed) for d in bare.differences for f in d.fields
              if f.path == "order"]
    assert orders == [("., .., d, c, b, a", "., .., a, b, c, d")], bare.text()
    strict = replay(trace, argv, strict_order=True)
    assert not strict.ok
    assert any(f.path.endswith(".name") for d in strict.differences for f in d.fields)


# --- what the trace cannot hold -------------------------------------------------------------

def _pt_writes(m: Path) -> None:
    """Data written through passthrough: the kernel writes it, the server never sees it."""
    (m / "new.bin").write_bytes(blob(50_000))
    os.stat(m / "new.bin")
    with open(m / "dir" / "a.txt", "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"more\n" * 2000)
        f.flush()
        os.fstat(f.fileno())
    os.stat(m / "dir" / "a.txt")
    os.stat(m / "b.bin")
    os.statvfs(m)


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
def test_passthrough_writes_are_masked_and_counted(tmp_path: Path) -> None:
    """After a writable passthrough open, the file's size, blocks and times are not
    compared (the replayed server's file never got the data); the report says how many
    differences that hid, and nothing else is hidden by it."""
    (tmp_path / "rec").mkdir()
    rec = _record(tmp_path / "rec", _passthroughfs, _pt_writes, _pt_source)
    report = replay(rec.trace, rec.fresh(tmp_path / "a"))
    assert report.ok, report.text()
    assert report.hidden[WHY] > 0
    assert any("opened for writing through passthrough" in note for note in report.notes)
    assert f"{WHY}: {report.hidden[WHY]}" in report.text()
    assert report.json()["hidden"] == report.hidden
    # without the default masks, the written files' times are hidden by this one too;
    # no size or block count differs anywhere
    bare = replay(rec.trace, rec.fresh(tmp_path / "b"), masks=Masks(defaults=False))
    assert bare.hidden[WHY] > report.hidden[WHY]
    paths = {f.path.rsplit(".", 1)[-1] for d in bare.differences for f in d.fields}
    assert paths <= {"ino", "atime", "mtime", "ctime", "atimensec", "mtimensec", "ctimensec",
                     "bfree", "bavail", "ffree"}, bare.text()


# --- real servers, real workloads -----------------------------------------------------------

def _seed(where: Path) -> Path:
    """What the workloads copy in: a small tree, its tarball, a git repository of it."""
    tree_dir = where / "tree"
    (tree_dir / "sub").mkdir(parents=True)
    for i in range(8):
        (tree_dir / f"f{i}.txt").write_bytes(blob(100 * i + 1))
    (tree_dir / "sub" / "deep.bin").write_bytes(blob(100_000))
    os.symlink("f1.txt", tree_dir / "link")
    subprocess.run(["tar", "cf", str(where / "t.tar"), "-C", str(where), "tree"], check=True)
    repo = where / "repo"
    shutil.copytree(tree_dir, repo / "tree", symlinks=True)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], check=True)
    return where


def _real_workload(seed: Path, clone: bool = True) -> Callable[[Path], None]:
    """`git clone`, `tar x`, `rsync -a`, `shutil.copytree`, renames (a file, a directory)
    and unlinks (files, an empty directory), `ls -lR`, `cat`."""
    def work(m: Path) -> None:
        if clone:
            subprocess.run(["git", "clone", "-q", str(seed / "repo"), str(m / "clone")], check=True)
        subprocess.run(["tar", "xf", str(seed / "t.tar"), "-C", str(m)], check=True)
        subprocess.run(["rsync", "-a", f"{seed / 'tree'}/", str(m / "rs")], check=True)
        shutil.copytree(seed / "tree", m / "ct", symlinks=True)
        os.rename(m / "ct" / "f0.txt", m / "ct" / "renamed.txt")
        os.rename(m / "rs" / "sub", m / "rs" / "moved")
        os.unlink(m / "ct" / "f1.txt")
        os.unlink(m / "rs" / "link")
        (m / "ct" / "empty").mkdir()
        os.rmdir(m / "ct" / "empty")
        _read_all(m)
    return work


def _read_all(m: Path) -> None:
    subprocess.run(["ls", "-lR", str(m)], check=True, capture_output=True)
    for path in sorted(m.rglob("*.txt")):
        path.read_bytes()


def _image(kind: str) -> Callable[[Path], None]:
    def fill(src: Path) -> None:
        if kind == "squashfs":
            subprocess.run(["mksquashfs", str(src.parent.parent / "seed" / "tree"),
                            str(src / "image.sqfs"), "-quiet", "-noappend"], check=True,
                           capture_output=True, timeout=60)
        elif kind == "ntfs":
            with open(src / "ntfs.img", "wb") as f:
                f.truncate(64 << 20)
            subprocess.run(["mkntfs", "-F", "-f", "-q", str(src / "ntfs.img")], check=True,
                           capture_output=True, timeout=60)
        else:
            subprocess.run(["zip", "-qr", str(src / "a.zip"), "tree"],
                           cwd=src.parent.parent / "seed", check=True)
    return fill


@dataclass
class RealServer:
    tools: tuple[str, ...]
    argv: Callable[[Path, Path], list[str]]
    fill: Callable[[Path], None] | None
    clone: bool = True
    writes: bool = True  # False: read-only, the workload only lists and reads
    masks: tuple[str, ...] = ()  # beyond the defaults, and why (at the entry)


def _gocryptfs_cipher(src: Path) -> None:
    (src / "pw").write_text("password\n")
    (src / "cipher").mkdir()
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(src / "pw"), "-scryptn", "10",
                    str(src / "cipher")], check=True, capture_output=True, timeout=60)


REAL = {
    "bindfs": RealServer(("bindfs",), lambda s, m: ["bindfs", "-f", str(s), str(m)], lambda s: None),
    "fuse-overlayfs": RealServer(("fuse-overlayfs",), _overlayfs, lambda s: None),
    "squashfuse": RealServer(("squashfuse", "mksquashfs"),
                             lambda s, m: ["squashfuse", "-f", str(s / "image.sqfs"), str(m)],
                             _image("squashfs"), writes=False),
    "ntfs-3g": RealServer(("ntfs-3g", "mkntfs"),
                          lambda s, m: ["ntfs-3g", str(s / "ntfs.img"), str(m)], _image("ntfs")),
    "fuse-zip": RealServer(("fuse-zip", "zip"),
                           lambda s, m: ["fuse-zip", "-f", str(s / "a.zip"), str(m)], _image("zip")),
    "pyfuse3-memfs": RealServer((), _memfs, None),
    "passthroughfs": RealServer((), _passthroughfs_plain, lambda s: None),
    # git clone opens one file from several processes at once: which open registers the
    # backing id was a race in the recording (see the README's limits)
    "passthroughfs-passthrough": RealServer((), _passthroughfs, lambda s: None, clone=False),
    # go-fuse: daemonizes (re-executes itself), mounts through fusermount3, reuses handles,
    # opens a file in its own mountpoint at start. A file's blocks are its cipher file's on
    # ext4, written in pieces: how many ext4 has allocated by then varies from run to run.
    "gocryptfs": RealServer(("gocryptfs",), lambda s, m: [
        "gocryptfs", "-q", "-passfile", str(s / "pw"), str(s / "cipher"), str(m)],
        _gocryptfs_cipher, masks=("*.blocks",)),
    # the memfs handing out handles as go-fuse does: the lowest free one, at once
    "pyfuse3-memfs-small-handles": RealServer((), lambda s, m: [*MEMFS, "--small-handles", str(m)],
                                              None),
}


@pytest.mark.requires_fuse
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(REAL))
def test_real_server_replays_identically_twenty_times(name: str, tmp_path: Path) -> None:
    """A real workload recorded from the server, replayed 20 times against a fresh copy
    of the initial state: no differences, the same report every time, and the server
    exits as it did when recorded."""
    server = REAL[name]
    for tool in (*server.tools, "git", "rsync", "tar"):
        if shutil.which(tool) is None:
            pytest.skip(f"not installed: {tool}")
    seed = _seed(tmp_path / "seed")
    base = tmp_path / "rec"
    base.mkdir()
    work = _real_workload(seed, server.clone) if server.writes else _read_all
    rec = _record(base, server.argv, work, server.fill)
    reports = set()
    for _ in range(20):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        report = replay(rec.trace, rec.fresh(tmp_path / "run"), masks=Masks(server.masks))
        assert report.ok, report.text()
        reports.add(_stable(report))
    assert len(reports) == 1
    assert report.counts["requests"] > 100
