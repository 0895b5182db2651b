"""Mounts left behind by a recorder that died, and `fusetrace cleanup [MOUNTPOINT]`.

While it records, fusetrace keeps a note per mount in its run directory (`/run/fusetrace`
for root, `$XDG_RUNTIME_DIR/fusetrace` otherwise, or `$FUSETRACE_RUNDIR`; without a
runtime directory `/tmp/fusetrace-UID`, used only if it is a real directory of the user's
own that nobody else can enter, so a name anyone can predict gives nobody a way in):
its own pid and start time, the mountpoint, the mount's device,
the server's pid and start time, the trace. When a recorder dies without cleaning up
(`kill -9`), its /dev/fuse descriptor closes, the kernel aborts the connection, and the
mount stays behind answering ENOTCONN: disconnected. `cleanup` finds the notes whose
recorder is gone (pid and start time, so a reused pid does not fool it), lazily unmounts
the mount if the same device is still there, stops the server if it is somehow still
running (also matched by pid and start time), and removes the note.

A FUSE mount named on the command line that has no note is probed with statfs(2) in a
helper thread: ENOTCONN means disconnected and it is unmounted; a mount that answers, or
does not answer within two seconds, is left alone (it may be someone's live session).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from stat import S_ISDIR
from typing import IO

from ..mounts import MountEntry, canonical, mounts_at, unmount

RUN_DIR = "/run/fusetrace"
_PROBE_TIMEOUT = 2.0


class RunDirError(OSError):
    """The run directory is not private: its notes could be read or planted by others."""


def run_dir(create: bool = False) -> Path:
    """`$FUSETRACE_RUNDIR`, else /run/fusetrace for root and `$XDG_RUNTIME_DIR/fusetrace`
    (or /tmp/fusetrace-UID) for anyone else; made 0700 when `create`, and checked to be
    a directory (not a symlink) owned by us that only we can use, when it exists."""
    if os.environ.get("FUSETRACE_RUNDIR"):
        path = Path(os.environ["FUSETRACE_RUNDIR"])
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif os.geteuid() == 0:
        path = Path(RUN_DIR)
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(runtime, "fusetrace") if runtime else Path(f"/tmp/fusetrace-{os.geteuid()}")
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # nothing recorded yet: no notes to read
    if not S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RunDirError(f"run directory {path} is not a private directory of user "
                          f"{os.geteuid()} (mode 0700, not a symlink); remove it or set "
                          "FUSETRACE_RUNDIR")
    return path


def _write_private(path: Path, text: str) -> None:
    """Create `path` anew (never through a symlink, never over a file) and write it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _read_private(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # the name may hold spaces and parens
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    if not pid or started is None:
        return False
    state = _state(pid)
    return start_time(pid) == started and state not in (None, "Z", "X")


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


@dataclass
class Note:
    """What a running recorder says about its mount."""

    pid: int
    started: int | None
    mountpoint: str
    device: str
    trace: str
    server: list[str]
    server_pid: int | None = None
    server_started: int | None = None

    @property
    def path(self) -> Path:
        return run_dir() / f"{self.device.replace(':', '-')}.json"

    def save(self) -> None:
        """Write the note atomically (a reader never sees half of it)."""
        directory = run_dir(create=True)
        tmp = directory / f".{self.path.name}.{os.getpid()}"
        try:
            tmp.unlink()  # a leftover of an earlier save by a process of the same pid
        except FileNotFoundError:
            pass
        _write_private(tmp, json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @property
    def recorder_alive(self) -> bool:
        return alive(self.pid, self.started)


def notes() -> list[Note]:
    found = []
    for path in sorted(run_dir().glob("*.json")):
        try:
            found.append(Note(**json.loads(_read_private(path))))
        except (OSError, ValueError, TypeError):
            continue  # unreadable or from another version: not ours to judge
    return found


def leftover_note(mountpoint: str) -> Note | None:
    """The note of a dead recorder whose mount is still on `mountpoint`."""
    target = canonical(mountpoint)
    devices = {e.device for e in mounts_at(target)}
    for note in notes():
        if note.mountpoint == target and note.device in devices and not note.recorder_alive:
            return note
    return None


def _probe(mountpoint: str) -> int | None:
    """statfs errno of a mount (0 when it answers), or None when it does not answer."""
    result: list[int] = []

    def run() -> None:
        try:
            os.statvfs(mountpoint)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT)
    return result[0] if result else None


def _clean_note(note: Note, out: IO[str], err: IO[str]) -> bool:
    """Unmount a dead recorder's mount and stop its server; True when something was done."""
    did = False
    try:
        how = unmount(note.mountpoint, note.device)
    except OSError as exc:
        print(f"fusetrace: {note.mountpoint}: cannot unmount: {exc.strerror}", file=err)
        return False
    if how:
        print(f"{note.mountpoint}: disconnected (its recorder, pid {note.pid}, is gone; trace "
              f"{note.trace}): {how}", file=out)
        did = True
    if alive(note.server_pid, note.server_started):
        assert note.server_pid is not None
        os.kill(note.server_pid, signal.SIGTERM)
        print(f"{note.mountpoint}: sent SIGTERM to its server, pid {note.server_pid}", file=out)
        did = True
    note.remove()
    return did


def _clean_unnoted(entry: MountEntry, out: IO[str], err: IO[str]) -> int:
    probed = _probe(entry.mountpoint)
    if probed == errno.ENOTCONN:
        how = unmount(entry.mountpoint, entry.device)
        print(f"{entry.mountpoint}: disconnected ({entry.fstype} {entry.source}): {how}", file=out)
        return 0
    state = ("does not answer" if probed is None else "answers" if probed == 0
             else os.strerror(probed))
    print(f"fusetrace: {entry.mountpoint}: not a leftover fusetrace mount ({entry.fstype}, "
          f"{state}); leaving it alone (fusermount3 -u or umount -l remove it)", file=err)
    return 1


def cleanup(mountpoint: str | None, out: IO[str], err: IO[str]) -> int:
    """`fusetrace cleanup`: 0 when everything asked for is clean, 1 when something live
    was left alone, 2 for a MOUNTPOINT that is no FUSE mount."""
    target = canonical(mountpoint) if mountpoint else None
    status, cleaned = 0, 0
    for note in notes():
        if target is not None and note.mountpoint != target:
            continue
        if note.recorder_alive:
            if target is not None:
                print(f"fusetrace: {target}: being recorded by pid {note.pid}; stop that "
                      f"(Ctrl-C) instead", file=err)
                status = 1
            continue
        cleaned += _clean_note(note, out, err)
    if target is not None and status == 0:
        remaining = [e for e in mounts_at(target) if e.is_fuse]
        if remaining:
            status = _clean_unnoted(remaining[-1], out, err)
        elif not cleaned:
            print(f"fusetrace: {target}: no FUSE mount there", file=err)
            status = 2
    elif target is None and not cleaned:
        print("no leftover fusetrace mounts", file=out)
    return status
