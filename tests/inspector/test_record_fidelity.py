"""Under `fusetrace record`, neither the server nor the user can tell: for servers of every
family and every way of getting the connection, the same real workload (`shutil.copytree`,
`tar x`, `git clone`, `rsync -a`, reads) run on the server mounted directly and under `record` gives
the same files, the same errors, the same mount in /proc/self/mountinfo (source, type,
flags, options), the same exit status and the same data on disk afterwards.

Servers: bindfs (libfuse 2: opens /dev/fuse and mounts), fuse-overlayfs (libfuse 3),
squashfuse (libfuse 3, daemonizes), ntfs-3g (its own FUSE code, fuse-lite), gocryptfs (Go,
go-fuse: daemonizes, mounts through fusermount3 with _FUSE_COMMFD), fuse-zip (writes its
archive after the unmount), a pyfuse3 filesystem, and the bundled passthroughfs (no
libfuse at all: its own mount(2), or the helper; with passthrough).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from dissectors import IoctlCall
from dissectors.ioctls import DevIoctl
from inspector.testing import cleanup_mount, is_mounted, recorded_server, wait_for_mount

from record_support import (
    MEMFS,
    PASSTHROUGHFS,
    REPO,
    check_trace,
    events_of,
    make_source,
    need,
    processes_mentioning,
    ro_workload,
)

FIDELITY_TIMEOUT = 120


def tree_of(root: Path) -> dict[str, Any]:
    """Every entry under `root`: type, permission bits, size, content hash (a clone's
    .git holds times and paths: only its presence counts)."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath).name == ".git":
            dirnames[:], filenames = [], []
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            elif not path.is_file():  # an overlay's whiteout, a device node
                out[rel] = ("node", oct(st.st_mode), st.st_rdev)
            else:
                out[rel] = ("file", oct(st.st_mode & 0o7777), st.st_size,
                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _inputs(base: Path) -> tuple[Path, Path, Path]:
    """A small tree, a tar of it and a git repository of it, outside any mount."""
    tree = base / "input-tree"
    if not tree.exists():
        (tree / "sub" / "deeper").mkdir(parents=True)
        for i in range(20):
            (tree / "sub" / f"f{i}.txt").write_text(f"file {i}\n" * (i * 50 + 1))
        (tree / "sub" / "deeper" / "bin").write_bytes(bytes(range(256)) * 600)
        os.chmod(tree / "sub" / "f3.txt", 0o600)
        os.symlink("sub/f1.txt", tree / "link")
        with tarfile.open(base / "input.tar", "w") as tar:
            tar.add(tree, arcname="untarred")
        repo = base / "input-repo"
        shutil.copytree(tree, repo, symlinks=True)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
        subprocess.run([*git, "add", "-A"], check=True, timeout=30)
        subprocess.run([*git, "commit", "-qm", "x"], check=True, timeout=30)
    return tree, base / "input.tar", base / "input-repo"


def rw_work(mnt: Path, inputs: tuple[Path, Path, Path]) -> dict[str, Any]:
    """copytree, tar x, git clone, rsync -a into the mount; what the mount then shows."""
    tree, tar, repo = inputs
    shutil.copytree(tree, mnt / "copied", symlinks=True)
    subprocess.run(["rsync", "-a", f"{tree}/", str(mnt / "synced")], check=True, timeout=60,
                   capture_output=True)
    subprocess.run(["tar", "xf", str(tar), "-C", str(mnt)], check=True, timeout=60)
    subprocess.run(["git", "clone", "-q", str(repo), str(mnt / "cloned")], check=True,
                   timeout=60, capture_output=True)
    (mnt / "copied" / "sub" / "f2.txt").unlink()
    os.rename(mnt / "copied" / "sub" / "f4.txt", mnt / "copied" / "renamed.txt")
    seen = tree_of(mnt)
    try:
        os.rmdir(mnt / "copied")
    except OSError as exc:
        seen["rmdir_nonempty"] = exc.errno
    return seen


def mount_fields(mnt: Path, base: Path) -> tuple[str, ...]:
    """The mount's mountinfo fields that a user or the server sees, paths made relative
    to the case's directory (the direct and the recorded run use different ones)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if fields[4] == str(mnt):
            return tuple(f.replace(str(base), "BASE") for f in
                         (fields[3], fields[5], *fields[6:], *tail))
    raise AssertionError(f"{mnt} is not mounted")


@dataclass
class Case:
    """One server: how to prepare its state, start it, work on it, read its data after."""

    name: str
    tools: tuple[str, ...]
    argv: Callable[[Path], list[str]]  # base directory → command line (mountpoint base/mnt)
    prepare: Callable[[Path], None] = lambda base: None
    work: str = "rw"  # "rw" or "ro"
    after: Callable[[Path], Any] = lambda base: None  # the data on disk after the session
    daemonizes: str | None = None  # text in the daemon's command line, to wait for its end
    #: what `check` rightly finds in the server itself (it happens mounted directly too)
    anomalies_ok: frozenset[str] = frozenset()


def _dirs(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)


def _squash(base: Path) -> None:
    _dirs(base, "src")
    make_source(base / "src")
    subprocess.run(["mksquashfs", str(base / "src"), str(base / "image.sqfs"), "-quiet",
                    "-noappend"], check=True, capture_output=True, timeout=60)


def _gocryptfs(base: Path) -> None:
    _dirs(base, "cipher")
    (base / "pw").write_text("password\n")
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(base / "pw"),
                    "-scryptn", "10", str(base / "cipher")], check=True, capture_output=True,
                   timeout=60)


def _ntfs(base: Path) -> None:
    with open(base / "ntfs.img", "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkntfs", "-F", "-f", "-q", str(base / "ntfs.img")], check=True,
                   capture_output=True, timeout=60)


def _zip_contents(base: Path) -> Any:
    with zipfile.ZipFile(base / "archive.zip") as z:
        return sorted((i.filename, i.file_size, hashlib.sha256(z.read(i)).hexdigest())
                      for i in z.infolist() if not i.filename.startswith("cloned/.git/"))


def _ntfs_contents(base: Path) -> Any:
    """What the image holds, read by ntfs-3g's own tool (no mount)."""
    res = subprocess.run(["ntfsls", "-R", "-a", str(base / "ntfs.img")], capture_output=True,
                         text=True, timeout=60)
    return res.returncode, sorted(res.stdout.split())


CASES = [
    Case("bindfs", ("bindfs",), lambda b: ["bindfs", "-f", str(b / "src"), str(b / "mnt")],
         lambda b: _dirs(b, "src"), after=lambda b: tree_of(b / "src")),
    Case("fuse-overlayfs", ("fuse-overlayfs",),
         lambda b: ["fuse-overlayfs", "-f", "-o",
                    f"lowerdir={b / 'lower'},upperdir={b / 'upper'},workdir={b / 'work'}",
                    str(b / "mnt")],
         lambda b: _dirs(b, "lower", "upper", "work"), after=lambda b: tree_of(b / "upper")),
    Case("squashfuse", ("squashfuse", "mksquashfs"),
         lambda b: ["squashfuse", str(b / "image.sqfs"), str(b / "mnt")], _squash, work="ro",
         daemonizes="image.sqfs"),
    Case("ntfs-3g", ("ntfs-3g", "mkntfs", "ntfsls"),
         lambda b: ["ntfs-3g", str(b / "ntfs.img"), str(b / "mnt")], _ntfs,
         after=_ntfs_contents, daemonizes="ntfs.img",
         # fuse-lite answers BATCH_FORGET (which wants no reply) with ENOSYS when it sees one
         anomalies_ok=frozenset({"reply-duplicate", "reply-rejected"})),
    Case("gocryptfs", ("gocryptfs",),
         lambda b: ["gocryptfs", "-q", "-passfile", str(b / "pw"), str(b / "cipher"),
                    str(b / "mnt")], _gocryptfs, daemonizes="cipher"),
    Case("fuse-zip", ("fuse-zip",),
         lambda b: ["fuse-zip", "-f", str(b / "archive.zip"), str(b / "mnt")],
         after=_zip_contents),
    Case("pyfuse3-memfs", (), lambda b: [*MEMFS, str(b / "mnt")]),
    Case("passthroughfs", (),
         lambda b: [*PASSTHROUGHFS, str(b / "src"), str(b / "mnt")],
         lambda b: _dirs(b, "src"), after=lambda b: tree_of(b / "src")),
    Case("passthroughfs-helper", ("fusermount3",),
         lambda b: [*PASSTHROUGHFS, str(b / "src"), str(b / "mnt"), "--mount-with",
                    "fusermount3"],
         lambda b: _dirs(b, "src"), after=lambda b: tree_of(b / "src")),
    # every worker on a clone of the session's descriptor (libfuse's clone_fd), and a
    # notification sent from a thread of its own while the rename is answered (rclone)
    Case("passthroughfs-clone-fd-notify", (),
         lambda b: [*PASSTHROUGHFS, str(b / "src"), str(b / "mnt"), "--clone-fd",
                    "--notify-renames"],
         lambda b: _dirs(b, "src"), after=lambda b: tree_of(b / "src")),
]


@dataclass
class Outcome:
    mount: tuple[str, ...]
    seen: Any
    status: int
    after: Any
    output: str


def _wait_daemon_gone(text: str | None) -> None:
    deadline = time.monotonic() + 60
    while text and processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (text and processes_mentioning(text)), f"{text}: still running"


def _work(case: Case, mnt: Path, inputs: tuple[Path, Path, Path]) -> Any:
    if case.work == "ro":
        return ro_workload(mnt)
    return rw_work(mnt, inputs)


def _direct(case: Case, base: Path, inputs: tuple[Path, Path, Path]) -> Outcome:
    base.mkdir(parents=True)
    case.prepare(base)
    mnt = base / "mnt"
    mnt.mkdir()
    log = base / "direct.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(case.argv(base), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, cwd=REPO)
        try:
            wait_for_mount(mnt, proc, 20)
            mount = mount_fields(mnt, base)
            seen = _work(case, mnt, inputs)
            subprocess.run(["umount", str(mnt)], check=True, timeout=60)
            status = proc.wait(60)
            _wait_daemon_gone(case.daemonizes)
        finally:
            cleanup_mount(mnt, proc)
    return Outcome(mount, seen, status, case.after(base), log.read_text(errors="replace"))


def _recorded(case: Case, base: Path, inputs: tuple[Path, Path, Path]) -> tuple[Outcome, Path]:
    base.mkdir(parents=True)
    case.prepare(base)
    mnt = base / "mnt"
    mnt.mkdir()
    trace = base / "t.fzt"
    with recorded_server(case.argv(base), mnt, trace, timeout=20, cwd=REPO) as rec:
        mount = mount_fields(mnt, base)
        seen = _work(case, mnt, inputs)
        status = rec.unmount_and_wait(timeout=60)
        _wait_daemon_gone(case.daemonizes)
    return Outcome(mount, seen, status, case.after(base), rec.output()), trace


@pytest.mark.requires_fuse
@pytest.mark.timeout(FIDELITY_TIMEOUT)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recorded_like_direct(case: Case, isolated: Path, tmp_path: Path) -> None:
    need(*case.tools, "git", "tar", "rsync")
    if case.name == "pyfuse3-memfs":
        pytest.importorskip("pyfuse3")
    inputs = _inputs(tmp_path)
    direct = _direct(case, tmp_path / "direct", inputs)
    recorded, trace = _recorded(case, tmp_path / "recorded", inputs)
    assert recorded.mount == direct.mount
    assert recorded.seen == direct.seen
    assert recorded.after == direct.after
    assert recorded.status == direct.status == 0, recorded.output
    for noise in ("short read", "failed to unmount", "Input/output error"):
        assert noise not in recorded.output, recorded.output
    decoded = check_trace(trace, anomalies_ok=case.anomalies_ok)
    [end] = events_of(decoded, "session_end")
    assert end["reason"] == "unmounted" and end["server_ended"] == "itself", end
    [connected] = events_of(decoded, "connected")
    assert connected["route"] == ("helper" if case.name in ("gocryptfs", "passthroughfs-helper")
                                  else "device-open")
    assert not is_mounted(tmp_path / "recorded" / "mnt")
    if "--clone-fd" in case.argv(tmp_path):
        clones = [e for e in decoded.entries if isinstance(e.decoded, IoctlCall)
                  and e.decoded.cmd == DevIoctl.CLONE]
        assert len(clones) == 4 and all(e.decoded.result == 0 for e in clones)
