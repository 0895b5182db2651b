"""Shared parts of the `fusetrace record` tests: server command lines, workloads run with
and without the proxy, and the checks every recorded trace must pass."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from dissectors import FuseRaw, Message, decode_request
from dissectors.constants import NO_REPLY_OPCODES, Opcode
from dissectors.constants import FUSE_OVER_IO_URING
from inspector.lifecycles import analyse
from inspector.testing import DecodedTrace, decode_trace, is_mounted, record_command, tree
from private_host import give_to_nobody

REPO = Path(__file__).resolve().parents[2]
PASSTHROUGHFS = [sys.executable, "-m", "inspector.passthroughfs"]
MEMFS = [sys.executable, str(REPO / "tests" / "servers" / "memfs.py")]
FUSETRACE = [sys.executable, "-m", "inspector.cli"]
MiB = 1 << 20
BIG = 3 * MiB + 12345  # large enough for 128 KiB READs, not a multiple of anything
NO_REPLY = NO_REPLY_OPCODES | {Opcode.INTERRUPT}


def mount_test(test: Callable[..., None]) -> Callable[..., None]:
    """A test that mounts: skipped without FUSE, and bounded in time."""
    return pytest.mark.requires_fuse(pytest.mark.timeout(60)(test))


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def blob(size: int = BIG, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def fusetrace(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FUSETRACE, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, **kw)


# --- processes -------------------------------------------------------------------------

def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry), cmdline))
    return found


def assert_no_strays(text: str, wait: float = 10.0) -> None:
    """No process mentioning `text` survives (after `wait` seconds); kills and fails."""
    deadline = time.monotonic() + wait
    while (strays := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not strays, f"stray processes: {strays}"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- workloads -----------------------------------------------------------------------

def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """The call's result, or the name of the errno it failed with."""
    try:
        return call(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def read_uncached(path: Path) -> bytes:
    """Read a file after dropping its pages from the cache, so READs reach the server."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def rw_workload(root: Path, xattrs: bool = True) -> dict[str, Any]:
    """Plain file operations on a writable filesystem; returns what they showed."""
    seen: dict[str, Any] = {}
    d = root / "d"
    d.mkdir()
    f = d / "f.txt"
    f.write_bytes(b"hello world\n" * 1000)
    with open(f, "ab") as fh:
        fh.write(b"appended\n")
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"WORLD")
        fh.flush()
        os.fsync(fh.fileno())
    seen["read"] = hashlib.sha256(read_uncached(f)).hexdigest()
    data = blob()
    (root / "big").write_bytes(data)
    seen["big_same"] = read_uncached(root / "big") == data
    g = d / "g.txt"
    f.rename(g)
    seen["listing"] = sorted(os.listdir(d))
    seen["scandir"] = sorted((e.name, e.is_dir(), e.is_symlink()) for e in os.scandir(root))
    os.chmod(g, 0o640)
    os.truncate(g, 100)
    os.utime(g, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(g)
    seen["stat"] = (oct(st.st_mode), st.st_size, st.st_nlink, st.st_mtime_ns)
    os.symlink("d/g.txt", root / "link")
    seen["readlink"] = os.readlink(root / "link")
    seen["via_link"] = (root / "link").read_bytes()[:20]
    os.link(g, root / "hard")
    seen["nlink"] = os.stat(g).st_nlink
    os.mkdir(root / "sub")
    (root / "sub" / "x").write_bytes(b"x")
    seen["rmdir_nonempty"] = outcome(os.rmdir, root / "sub")
    seen["mkdir_exists"] = outcome(os.mkdir, d)
    seen["open_missing"] = outcome(open, root / "missing")
    seen["rmdir_file"] = outcome(os.rmdir, g)
    if xattrs:
        os.setxattr(g, "user.color", b"blue")
        seen["getxattr"] = os.getxattr(g, "user.color")
        seen["listxattr"] = sorted(n for n in os.listxattr(g) if n.startswith("user."))
        os.removexattr(g, "user.color")
        seen["getxattr_removed"] = outcome(os.getxattr, g, "user.color")
    os.unlink(root / "sub" / "x")
    os.rmdir(root / "sub")
    os.unlink(root / "hard")
    seen["unlink_missing"] = outcome(os.unlink, root / "hard")
    seen["tree"] = tree(root)
    return seen


def make_source(src: Path) -> None:
    """The read-only tree squashfuse serves (and the lower layer of the overlay)."""
    (src / "dir").mkdir()
    (src / "dir" / "small.txt").write_bytes(b"small file\n")
    (src / "big").write_bytes(blob())
    (src / "empty").write_bytes(b"")
    os.symlink("dir/small.txt", src / "link")
    os.chmod(src / "dir" / "small.txt", 0o600)


def ro_workload(root: Path) -> dict[str, Any]:
    """Reads and failing writes on a read-only filesystem made by `make_source`."""
    seen: dict[str, Any] = {"tree": tree(root)}
    seen["big_same"] = read_uncached(root / "big") == blob()
    seen["small"] = (root / "dir" / "small.txt").read_bytes()
    seen["readlink"] = os.readlink(root / "link")
    seen["via_link"] = (root / "link").read_bytes()
    seen["stat"] = [(oct(s.st_mode), s.st_size, s.st_nlink) for s in
                    (os.stat(root / p) for p in ("big", "dir", "empty", "dir/small.txt"))]
    seen["open_missing"] = outcome(open, root / "missing")
    seen["create"] = outcome(open, root / "new", "wb")
    seen["mkdir"] = outcome(os.mkdir, root / "newdir")
    seen["unlink"] = outcome(os.unlink, root / "big")
    seen["listdir_file"] = outcome(os.listdir, root / "big")
    with open(root / "big", "rb") as fh:
        fh.seek(MiB + 3)
        seen["pread"] = hashlib.sha256(fh.read(300_000)).hexdigest()
    return seen


# --- trace checks ----------------------------------------------------------------------

def check_trace(path: Path, unanswered_ok: frozenset[int] = frozenset(),
                anomalies_ok: frozenset[str] = frozenset()) -> DecodedTrace:
    """Everything a recorded trace must hold: no cut tail; every message decodes with no
    raw fallback; every request that wants a reply has exactly one, except those whose
    reply the kernel rejected (the connection was gone) and opcodes in `unanswered_ok`;
    an INIT altered with the original and a reason; the server's exit; the end; and
    `fusetrace check` finds nothing wrong but `anomalies_ok` (notes never count)."""
    analysis = analyse(path)
    found = {a.code: a.message for a in analysis.anomalies
             if a.severity != "note" and a.code not in anomalies_ok}
    assert not found, found
    decoded = decode_trace(path)
    assert decoded.tail is None, decoded.tail
    assert decoded.header["source"] == "proxy"
    assert decoded.header["kernel"] == os.uname().release
    pending: dict[int, int] = {}
    rejected: set[int] = set()
    for entry in decoded.entries:
        rec, msg = entry.record, entry.decoded
        if rec.event == "reply_rejected":
            assert rec.meta["write_errno"] in (errno.ENOENT, errno.ENODEV), rec.meta
            rejected.add(rec.meta["unique"])
        if not isinstance(msg, Message):
            continue
        assert not msg.brief.reason, msg.text
        assert not msg.packet().haslayer(FuseRaw), msg.text
        if rec.is_request:
            if msg.brief.opcode not in NO_REPLY:
                assert msg.brief.unique not in pending, msg.text
                pending[msg.brief.unique] = msg.brief.opcode
        elif msg.brief.unique:
            assert msg.brief.unique in pending, f"reply to no request: {msg.text}"
            del pending[msg.brief.unique]
    left = {u: Opcode(op).name for u, op in pending.items()
            if u not in rejected and op not in unanswered_ok}
    assert not left, f"requests without a reply: {left}"

    init = next(e for e in decoded.entries if e.record.is_request)
    assert isinstance(init.decoded, Message) and init.decoded.brief.opcode == Opcode.INIT
    meta = init.record.meta
    if "original" in meta:  # only when the kernel offered something unrelayable (io_uring)
        assert meta["reason"] and meta["original"] != init.record.raw
        assert not decode_request(meta["original"]).haslayer(FuseRaw)
    assert not (init.decoded.brief.get("flags2") or 0) << 32 & FUSE_OVER_IO_URING

    events = [e.record for e in decoded.entries if e.record.is_event]
    assert any(r.event == "server_exit" for r in events)
    assert events[-1].event == "session_end", events[-1].meta
    return decoded


def requests_of(decoded: DecodedTrace, opcode: int) -> list[Message]:
    return [e.decoded for e in decoded.entries if e.record.is_request
            and isinstance(e.decoded, Message) and e.decoded.brief.opcode == opcode]


def events_of(decoded: DecodedTrace, name: str) -> list[dict[str, Any]]:
    return [e.record.meta for e in decoded.entries if e.record.event == name]


# --- an ordinary user -------------------------------------------------------------------

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@contextlib.contextmanager
def dev_fuse_mode(mode: int) -> Iterator[None]:
    """/dev/fuse with `mode` for the test (some machines keep it root-only), restored.
    Only inside `nobody_dir`'s private mount namespace, on the test's own device node."""
    if os.stat("/dev/fuse").st_dev == os.stat("/dev").st_dev:
        raise AssertionError("dev_fuse_mode outside a private namespace would chmod the host's /dev/fuse")
    before = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


def record_as_nobody(server: Sequence[str], mnt: Path, trace: Path, *workload: list[str],
                     ) -> tuple[list[subprocess.CompletedProcess[str]],
                                subprocess.CompletedProcess[str], tuple[int, str]]:
    """`fusetrace record` of `server` as user nobody (through fusermount3), each workload
    command run as nobody on the mount, then `fusermount3 -u` as nobody: the workloads'
    results, the unmount's, and fusetrace's (exit status, stderr). `mnt` is created."""
    mnt.mkdir()
    give_to_nobody(mnt)
    with dev_fuse_mode(0o666):
        rec = subprocess.Popen([*AS_NOBODY, *record_command(server, str(trace))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            deadline = time.monotonic() + 20
            while not is_mounted(mnt) and time.monotonic() < deadline and rec.poll() is None:
                time.sleep(0.05)
            seen = [subprocess.run([*AS_NOBODY, *cmd], capture_output=True, text=True,
                                   timeout=20) for cmd in workload]
            unmounted = subprocess.run([*AS_NOBODY, "fusermount3", "-u", str(mnt)],
                                       capture_output=True, text=True, timeout=20)
            _, err = rec.communicate(timeout=30)
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait(10)
    return seen, unmounted, (rec.returncode, err)
