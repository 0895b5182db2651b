"""The relay's lanes with real mounts: whatever the server does at once, `record` lets
happen at once.

- A notification the kernel holds on a directory lock (INVAL_ENTRY sent from a thread of
  its own while the rename that holds the directory is answered, as rclone does) must not
  hold back that answer: one relay thread writing one message at a time deadlocked here
  at the first rename.
- Eight clients on a multi-threaded server: every message in causal order in the trace (a
  request before its reply, a reply before the requests it causes), nothing lost.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dissectors import Message
from dissectors.constants import NotifyCode, Opcode
from inspector.reports.stats import relay_split
from inspector.testing import recorded_server

from record_support import PASSTHROUGHFS, check_trace, need

if TYPE_CHECKING:
    from conftest import FsDirs

RENAMES = 1000
STEP_TIMEOUT = 10.0  # one rename deadlocked never ends; a slow one ends in milliseconds


def _notifications(decoded: object, code: int) -> list[Message]:
    return [e.decoded for e in decoded.entries  # type: ignore[attr-defined]
            if isinstance(e.decoded, Message) and e.record.is_reply
            and not e.decoded.brief.unique and e.decoded.brief.error == code]


@pytest.mark.requires_fuse
@pytest.mark.requires_seccomp_notify
@pytest.mark.timeout(300)
def test_a_held_notification_does_not_hold_back_the_reply_that_frees_it(
        fs_dirs: FsDirs, tmp_path: Path) -> None:
    argv = [*PASSTHROUGHFS, "--notify-renames", str(fs_dirs.source), str(fs_dirs.mountpoint)]
    trace = tmp_path / "t.fzt"
    with recorded_server(argv, fs_dirs.mountpoint, trace) as rec:
        script = (f'for i in $(seq 1 {RENAMES}); do echo $i > f.lock && '
                  f'timeout {STEP_TIMEOUT} mv f.lock f || exit 1; done')
        done = subprocess.run(["sh", "-c", script], cwd=fs_dirs.mountpoint, timeout=240,
                              capture_output=True, text=True)
        assert done.returncode == 0, (done.stderr, rec.output())
        assert (fs_dirs.mountpoint / "f").read_text() == f"{RENAMES}\n"
        assert rec.unmount_and_wait() == 0, rec.output()
    decoded = check_trace(trace)
    renames = [e for e in decoded.entries if isinstance(e.decoded, Message)
               and e.record.is_request and e.decoded.brief.opcode in (Opcode.RENAME, Opcode.RENAME2)]
    assert len(renames) == RENAMES
    assert len(_notifications(decoded, NotifyCode.INVAL_ENTRY)) == RENAMES


@pytest.mark.requires_fuse
@pytest.mark.requires_seccomp_notify
@pytest.mark.timeout(300)
def test_git_clone_finishes_on_a_server_notifying_from_its_own_thread(
        fs_dirs: FsDirs, tmp_path: Path) -> None:
    """git renames lock files into place all along (index.lock, refs, packed-refs)."""
    need("git")
    origin = tmp_path / "origin"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(origin)], check=True, timeout=60)
    for i in range(40):
        (origin / f"file{i}.txt").write_text(f"{i}\n" * (i + 1))
    subprocess.run([*git, "-C", str(origin), "add", "."], check=True, timeout=60)
    subprocess.run([*git, "-C", str(origin), "commit", "-qm", "one"], check=True, timeout=60)
    argv = [*PASSTHROUGHFS, "--notify-renames", str(fs_dirs.source), str(fs_dirs.mountpoint)]
    trace = tmp_path / "t.fzt"
    with recorded_server(argv, fs_dirs.mountpoint, trace) as rec:
        clone = subprocess.run([*git, "clone", "-q", str(origin), "copy"], cwd=fs_dirs.mountpoint,
                               timeout=120, capture_output=True, text=True)
        assert clone.returncode == 0, (clone.stderr, rec.output())
        assert (fs_dirs.mountpoint / "copy" / "file39.txt").read_text() == "39\n" * 40
        assert rec.unmount_and_wait() == 0, rec.output()
    decoded = check_trace(trace)
    assert _notifications(decoded, NotifyCode.INVAL_ENTRY)


@pytest.mark.requires_fuse
@pytest.mark.requires_seccomp_notify
@pytest.mark.timeout(300)
def test_eight_clients_on_a_multithreaded_server_are_recorded_in_causal_order(
        fs_dirs: FsDirs, tmp_path: Path) -> None:
    """`check_trace` holds every request before its reply and, through `check`, every
    handle and node id handed out before it is used or released."""
    for i in range(8):
        (fs_dirs.source / f"d{i}").mkdir()
        for j in range(20):
            (fs_dirs.source / f"d{i}" / f"f{j}").write_bytes(os.urandom(2000 + j))
    argv = [*PASSTHROUGHFS, "--no-passthrough", "--threads", "4", "-o", "attr_timeout=0",
            "-o", "entry_timeout=0", str(fs_dirs.source), str(fs_dirs.mountpoint)]
    trace = tmp_path / "t.fzt"
    failures: list[BaseException] = []

    def client(i: int) -> None:
        try:
            top = fs_dirs.mountpoint / f"d{i}"
            for _ in range(5):
                for j in range(20):
                    path = top / f"f{j}"
                    assert path.stat().st_size == 2000 + j
                    assert len(path.read_bytes()) == 2000 + j
                new = top / "new"
                new.write_bytes(b"x" * i)
                new.rename(top / "moved")
                (top / "moved").unlink()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    with recorded_server(argv, fs_dirs.mountpoint, trace) as rec:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        assert not failures, failures
        assert rec.unmount_and_wait() == 0, rec.output()
    decoded = check_trace(trace)
    reads = [e for e in decoded.entries if isinstance(e.decoded, Message)
             and e.record.is_request and e.decoded.brief.opcode == Opcode.READ]
    assert len(reads) >= 8 * 20  # every file read through the server at least once
    split = relay_split(str(trace))  # every reply the C lanes relayed says how long it took
    replies = [e for e in decoded.entries if isinstance(e.decoded, Message)
               and e.record.is_reply and e.decoded.brief.unique
               and e.decoded.brief.opcode != Opcode.INIT]
    assert len(split.server) == len(replies) and all(n > 0 for n in split.server)
    assert split.percentile("added", 50) is not None
