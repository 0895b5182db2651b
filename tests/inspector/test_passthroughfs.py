"""passthroughfs on real mounts: a workload mirrors SOURCE, its own trace decodes fully,
passthrough really bypasses the server, and each misbehaviour has its measured effect.
Plus the mount test helpers themselves (`inspector.testing`)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from dissectors import FuseRaw, IoctlCall, Message
from dissectors.constants import (
    FOPEN_DIRECT_IO,
    FOPEN_PASSTHROUGH,
    FUSE_PASSTHROUGH,
    FUSE_WRITEBACK_CACHE,
    Opcode,
)
from dissectors.ioctls import DevIoctl
from inspector import syscalls
from inspector.passthroughfs.cli import parse_args
from inspector.passthroughfs.misbehave import parse
from inspector.mounts import MountOptions
from inspector.testing import (
    tree,
    DecodedTrace,
    MountedServer,
    cleanup_mount,
    decode_trace,
    is_mounted,
    mounted_server,
    stop_process,
    wait_for_mount,
)

if TYPE_CHECKING:
    from conftest import FsDirs

REPO = Path(__file__).resolve().parents[2]
SERVER = [sys.executable, "-m", "inspector.passthroughfs"]
NO_REPLY_EXPECTED = {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT}
#: Asynchronous requests an unmount may abort while the server handles them: the reply
#: then meets ENOENT (the request is gone), which the trace records as write_errno.
ABORTED_BY_UNMOUNT = {Opcode.RELEASE, Opcode.RELEASEDIR}
MiB = 1 << 20
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2



def mount_test(test: Callable[..., None]) -> Callable[..., None]:
    """A test that mounts: skipped without FUSE, and bounded in time."""
    return pytest.mark.requires_fuse(pytest.mark.timeout(60)(test))


# --- a server session and its trace --------------------------------------------------

@dataclass
class Session:
    """One server run on fresh directories, traced; `stop()` unmounts and decodes."""

    dirs: FsDirs
    trace: Path
    stack: ExitStack = field(default_factory=ExitStack)
    server: MountedServer | None = None

    @property
    def src(self) -> Path:
        return self.dirs.source

    @property
    def mnt(self) -> Path:
        return self.dirs.mountpoint

    def start(self, *args: str) -> MountedServer:
        argv = [*SERVER, str(self.src), str(self.mnt), "--trace", str(self.trace), *args]
        # cwd: run this checkout's packages whatever the installed copy says
        self.server = self.stack.enter_context(mounted_server(argv, self.mnt, cwd=REPO))
        return self.server

    def stop(self) -> Trace:
        self.stack.close()
        assert self.server is not None
        assert self.server.proc.returncode == 0, self.server.stderr()
        assert not is_mounted(self.mnt)
        return Trace(decode_trace(self.trace))


@pytest.fixture
def session(requires_fuse: None, fs_dirs: FsDirs, tmp_path: Path) -> Iterator[Session]:
    run = Session(fs_dirs, tmp_path / "server.fzt")
    try:
        yield run
    finally:
        run.stack.close()
        if run.server is not None:
            assert run.server.proc.poll() is not None, "server process left running"


class Trace:
    """Queries over a decoded trace, in recorded order."""

    def __init__(self, decoded: DecodedTrace) -> None:
        self.decoded = decoded
        self.entries = decoded.entries

    def messages(self) -> Iterator[tuple[int, Any, Message]]:
        for i, entry in enumerate(self.entries):
            if isinstance(entry.decoded, Message):
                yield i, entry.record, entry.decoded

    def requests(self, opcode: int) -> list[tuple[int, Message]]:
        return [(i, m) for i, rec, m in self.messages()
                if rec.is_request and m.brief.opcode == opcode]

    def reply(self, unique: int) -> tuple[int, Message]:
        found = [(i, m) for i, rec, m in self.messages()
                 if rec.is_reply and m.brief.unique == unique]
        assert len(found) == 1, f"{len(found)} replies to #{unique}"
        return found[0]

    def replies(self, opcode: int) -> list[Message]:
        return [self.reply(m.brief.unique)[1] for _, m in self.requests(opcode)]

    def ioctls(self, cmd: int) -> list[tuple[int, IoctlCall, dict[str, Any]]]:
        return [(i, e.decoded, e.record.meta) for i, e in enumerate(self.entries)
                if isinstance(e.decoded, IoctlCall) and e.decoded.cmd == cmd]

    def ts(self, index: int) -> int:
        return self.entries[index].record.ts

    def check(self, unanswered: frozenset[int] = frozenset()) -> None:
        """Everything decodes with no raw layer, every request that wants a reply has
        exactly one, and the server said it exited cleanly."""
        assert self.decoded.tail is None
        pending: dict[int, int] = {}
        for _, rec, msg in self.messages():
            assert not msg.brief.reason, msg.text
            assert not msg.packet().haslayer(FuseRaw), msg.text
            if rec.is_request and msg.brief.opcode not in NO_REPLY_EXPECTED | unanswered:
                assert msg.brief.unique not in pending, msg.text
                pending[msg.brief.unique] = 0
            elif rec.is_reply:
                if "write_errno" in rec.meta:
                    assert rec.meta["write_errno"] == errno.ENOENT, msg.text
                    assert msg.brief.opcode in ABORTED_BY_UNMOUNT, msg.text
                assert pending.get(msg.brief.unique) == 0, f"unexpected reply {msg.text}"
                pending[msg.brief.unique] = 1
        assert [u for u, n in pending.items() if n != 1] == []
        last = self.entries[-1].record
        assert last.event == "server_exit" and last.meta["status"] == 0


# --- the workload: the same operations on the mount and on a plain directory ------------

_libc = ctypes.CDLL(None, use_errno=True)


def _errno(call: Callable[..., Any], *args: Any) -> str:
    try:
        call(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "no error"


def _raw_getxattr(path: Path, name: str, size: int) -> int | str:
    """getxattr(2) itself: size 0 asks for the length, a short buffer is ERANGE."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, size)
    return n if n >= 0 else errno.errorcode[ctypes.get_errno()]


def _raw_listxattr(path: Path, size: int) -> int | str:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.listxattr(os.fsencode(path), buf if size else None, size)
    return n if n >= 0 else errno.errorcode[ctypes.get_errno()]


def workload(root: Path) -> dict[str, Any]:
    """Plain Python file operations; returns what they showed."""
    seen: dict[str, Any] = {}
    d = root / "dir"
    d.mkdir()
    f = d / "file.txt"
    f.write_bytes(b"hello world\n" * 1000)
    with open(f, "ab") as fh:
        fh.write(b"appended\n")
    seen["read"] = f.read_bytes()
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"WORLD")
        fh.seek(0)
        seen["read_write"] = fh.read(20)
        fh.flush()
        os.fsync(fh.fileno())
        seen["seek_data"] = os.lseek(fh.fileno(), 0, os.SEEK_DATA)
    r = d / "renamed.txt"
    f.rename(r)
    seen["listing"] = sorted(os.listdir(d))
    seen["scandir"] = sorted((e.name, e.is_dir(), e.is_symlink()) for e in os.scandir(root))
    os.chmod(r, 0o640)
    os.truncate(r, 100)
    with open(r, "r+b") as fh:
        os.ftruncate(fh.fileno(), 50)
        os.posix_fallocate(fh.fileno(), 0, 4096)
    os.utime(r, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(r)
    seen["stat"] = (oct(st.st_mode), st.st_size, st.st_nlink, st.st_atime_ns, st.st_mtime_ns)
    os.utime(r)
    seen["utime_now"] = abs(os.stat(r).st_mtime - time.time()) < 60
    os.symlink("dir/renamed.txt", root / "link")
    seen["readlink"] = os.readlink(root / "link")
    seen["via_link"] = (root / "link").read_bytes()
    os.link(r, root / "hard")
    seen["nlink"] = (os.stat(r).st_nlink, os.stat(root / "hard").st_nlink)
    os.rename(root / "hard", d / "hard2")
    (root / "spare").write_bytes(b"spare")
    os.replace(root / "spare", d / "hard2")  # overwrites one name of the linked file
    seen["nlink_after_replace"] = os.stat(r).st_nlink
    (root / "a").write_bytes(b"a")
    (root / "b").write_bytes(b"b")
    seen["noreplace"] = _errno(syscalls.renameat2, str(root / "a"), str(root / "b"), RENAME_NOREPLACE)
    syscalls.renameat2(str(root / "a"), str(root / "b"), RENAME_EXCHANGE)
    seen["exchanged"] = ((root / "a").read_bytes(), (root / "b").read_bytes())
    os.mkdir(root / "sub", 0o700)
    (root / "sub" / "x").write_bytes(b"x")
    seen["rmdir_nonempty"] = _errno(os.rmdir, root / "sub")
    os.unlink(root / "sub" / "x")
    os.rmdir(root / "sub")
    seen["mkdir_exists"] = _errno(os.mkdir, d)
    seen["open_missing"] = _errno(open, root / "missing")
    os.mkfifo(root / "fifo", 0o600)
    os.setxattr(r, "user.color", b"blue")
    os.setxattr(r, "user.big", b"x" * 100)
    seen["getxattr"] = os.getxattr(r, "user.color")
    seen["getxattr_size"] = _raw_getxattr(r, "user.big", 0)
    seen["getxattr_short"] = _raw_getxattr(r, "user.big", 10)
    seen["listxattr"] = sorted(os.listxattr(r))
    seen["listxattr_size"] = _raw_listxattr(r, 0)
    seen["listxattr_short"] = _raw_listxattr(r, 3)
    seen["xattr_create_exists"] = _errno(os.setxattr, r, "user.big", b"y", os.XATTR_CREATE)
    os.removexattr(r, "user.color")
    seen["listxattr_after"] = sorted(os.listxattr(r))
    seen["getxattr_removed"] = _errno(os.getxattr, r, "user.color")
    with open(r, "rb") as src, open(root / "copy", "wb") as dst:
        seen["copy_file_range"] = os.copy_file_range(src.fileno(), dst.fileno(), 50)
    os.unlink(d / "hard2")
    seen["unlink_missing"] = _errno(os.unlink, d / "hard2")
    seen["access"] = (os.access(r, os.R_OK), os.access(r, os.X_OK))
    seen["tree"] = tree(root)
    return seen


@mount_test
def test_workload_mirrors_source_and_trace_decodes(session: Session, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    expected = workload(reference)
    session.start()
    seen = workload(session.mnt)
    fs, src = os.statvfs(session.mnt), os.statvfs(session.src)
    assert (fs.f_bsize, fs.f_blocks, fs.f_namemax) == (src.f_bsize, src.f_blocks, src.f_namemax)
    trace = session.stop()

    assert seen == expected
    assert tree(session.src) == expected["tree"]
    trace.check()
    seen_ops = {m.brief.opcode for _, rec, m in trace.messages() if rec.is_request}
    assert {Opcode.CREATE, Opcode.RENAME, Opcode.RENAME2, Opcode.SETATTR, Opcode.SYMLINK, Opcode.LINK,
            Opcode.MKDIR, Opcode.RMDIR, Opcode.MKNOD, Opcode.SETXATTR, Opcode.LISTXATTR,
            Opcode.REMOVEXATTR, Opcode.UNLINK, Opcode.STATFS, Opcode.READDIRPLUS,
            Opcode.COPY_FILE_RANGE_64, Opcode.FALLOCATE, Opcode.LSEEK} <= seen_ops
    assert trace.decoded.header["source"] == "passthroughfs"


# --- passthrough ------------------------------------------------------------------------

def _passthrough_open(trace: Trace, name: str) -> tuple[int, int, int]:
    """(backing id, fh, index of the OPEN reply) of the one passthrough open of `name`."""
    [(i_ioctl, call, meta)] = trace.ioctls(DevIoctl.BACKING_OPEN)
    assert meta["path"].endswith("/" + name) and call.errno == 0 and call.result >= 1
    [reply] = trace.replies(Opcode.OPEN)
    assert reply.brief.get("open_flags") & FOPEN_PASSTHROUGH
    assert reply.brief.get("backing_id") == call.result
    i_reply, _ = trace.reply(reply.brief.unique)
    assert i_ioctl < i_reply
    return call.result, reply.brief.get("fh"), i_reply


@mount_test
def test_passthrough_read_bypasses_the_server(session: Session) -> None:
    data = os.urandom(MiB)
    (session.src / "big").write_bytes(data)
    session.start()
    assert (session.mnt / "big").read_bytes() == data
    trace = session.stop()

    trace.check()
    [init] = trace.replies(Opcode.INIT)
    assert init.brief.get("flags2") << 32 & FUSE_PASSTHROUGH
    assert init.brief.get("max_stack_depth") == 1
    backing_id, fh, _ = _passthrough_open(trace, "big")
    assert not [m for _, m in trace.requests(Opcode.READ) if m.brief.get("fh") == fh]
    [(i_release, _)] = [(i, m) for i, m in trace.requests(Opcode.RELEASE)
                        if m.brief.get("fh") == fh]
    [(i_close, close, _)] = trace.ioctls(DevIoctl.BACKING_CLOSE)
    assert close.fields == {"backing_id": backing_id} and close.errno == 0
    assert i_close > i_release


@mount_test
def test_passthrough_write_bypasses_the_server(session: Session) -> None:
    data = os.urandom(MiB)
    session.start()
    (session.mnt / "new").write_bytes(data)
    trace = session.stop()

    assert (session.src / "new").read_bytes() == data
    trace.check()
    [create] = trace.replies(Opcode.CREATE)
    assert create.brief.get("open_flags") & FOPEN_PASSTHROUGH
    assert not trace.requests(Opcode.WRITE)
    assert len(trace.ioctls(DevIoctl.BACKING_OPEN)) == len(trace.ioctls(DevIoctl.BACKING_CLOSE)) == 1


@mount_test
def test_no_passthrough_serves_reads_itself(session: Session) -> None:
    data = os.urandom(MiB)
    (session.src / "big").write_bytes(data)
    session.start("--no-passthrough", "--snaplen", "0")
    assert (session.mnt / "big").read_bytes() == data
    trace = session.stop()

    trace.check()
    [init] = trace.replies(Opcode.INIT)
    assert not init.brief.get("flags2") << 32 & FUSE_PASSTHROUGH
    assert sum(m.brief.extras["data_len"] for m in trace.replies(Opcode.READ)) == MiB
    assert not [e for e in trace.entries if e.record.is_ioctl]


@mount_test
def test_snaplen_cuts_file_data_and_keeps_true_lengths(session: Session) -> None:
    data = os.urandom(MiB)
    (session.src / "big").write_bytes(data)
    session.start("--no-passthrough", "-s", "100")
    assert (session.mnt / "big").read_bytes() == data
    (session.mnt / "copy").write_bytes(data[:200_000])
    trace = session.stop()

    trace.check()  # cut messages still decode with no raw layer
    reads = [e.record for e in trace.entries
             if e.record.is_reply and isinstance(e.decoded, Message)
             and e.decoded.brief.opcode == Opcode.READ]
    assert reads and all(len(r.raw) <= 16 + 100 for r in reads)
    assert sum(r.true_len - 16 for r in reads) == MiB
    writes = [m for _, m in trace.requests(Opcode.WRITE)]
    assert sum(m.brief.get("size") for m in writes) == 200_000
    assert all(m.brief.extras["data_len"] <= 100 for m in writes)


@mount_test
def test_serves_a_connection_passed_as_dev_fd(requires_fuse: None, fs_dirs: FsDirs,
                                              tmp_path: Path) -> None:
    """`/dev/fd/N`: the caller mounted; the server neither mounts nor unmounts."""
    (fs_dirs.source / "f").write_bytes(b"via fd")
    trace_path = tmp_path / "t.fzt"
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    proc = None
    try:
        syscalls.mount("passthroughfs", str(fs_dirs.mountpoint), "fuse.passthroughfs",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV, MountOptions().data(fd))
        proc = subprocess.Popen([*SERVER, str(fs_dirs.source), f"/dev/fd/{fd}",
                                 "--trace", str(trace_path)], cwd=REPO, pass_fds=[fd])
        os.close(fd)
        fd = -1
        assert (fs_dirs.mountpoint / "f").read_bytes() == b"via fd"
        syscalls.umount2(str(fs_dirs.mountpoint))
        assert proc.wait(10) == 0
    finally:
        if fd >= 0:
            os.close(fd)
        cleanup_mount(fs_dirs.mountpoint, proc)
    trace = Trace(decode_trace(trace_path))
    trace.check()
    _passthrough_open(trace, "f")


@mount_test
def test_sigterm_unmounts_even_when_busy(session: Session) -> None:
    """...and a passthrough file open across the server's exit still reads, from its
    backing file; only its close() notices (the FLUSH finds no server)."""
    (session.src / "f").write_bytes(b"busy")
    server = session.start()
    busy = os.open(session.mnt / "f", os.O_RDONLY)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert not is_mounted(session.mnt)
    assert os.read(busy, 100) == b"busy"
    with pytest.raises(OSError) as exc:
        os.close(busy)
    assert exc.value.errno == errno.ENOTCONN
    assert "stopping: signal SIGTERM" in server.stderr()
    session.stop().check()


# --- misbehaviours ------------------------------------------------------------------------

def _misbehaving(session: Session, switch: str, *args: str, size: int = MiB) -> bytes:
    data = os.urandom(size)
    (session.src / "f").write_bytes(data)
    session.start("--misbehave", switch, *args)
    return data


@mount_test
def test_leak_backing_id_never_closes(session: Session) -> None:
    data = _misbehaving(session, "leak-backing-id")
    (session.src / "g").write_bytes(data)
    for name in ("f", "g"):  # two inodes: two ids, whenever the releases arrive
        assert (session.mnt / name).read_bytes() == data
    trace = session.stop()
    trace.check()
    opened = [call.result for _, call, _ in trace.ioctls(DevIoctl.BACKING_OPEN)]
    assert len(opened) == 2 and len(set(opened)) == 2
    assert not trace.ioctls(DevIoctl.BACKING_CLOSE)


@mount_test
def test_close_twice_gets_enoent(session: Session) -> None:
    data = _misbehaving(session, "close-twice")
    assert (session.mnt / "f").read_bytes() == data
    trace = session.stop()
    trace.check()
    [(_, opened, _)] = trace.ioctls(DevIoctl.BACKING_OPEN)
    closes = [call for _, call, _ in trace.ioctls(DevIoctl.BACKING_CLOSE)]
    assert [c.fields["backing_id"] for c in closes] == [opened.result] * 2
    assert [(c.result, c.errno) for c in closes] == [(0, 0), (-1, errno.ENOENT)]


@mount_test
def test_unknown_backing_id_fails_open_with_eio(session: Session) -> None:
    _misbehaving(session, "unknown-backing-id")
    for path, mode in ((session.mnt / "f", "rb"), (session.mnt / "new", "wb")):
        with pytest.raises(OSError) as exc:
            open(path, mode)
        assert exc.value.errno == errno.EIO
    assert (session.src / "new").exists()  # the CREATE itself happened
    trace = session.stop()
    trace.check()
    replies = trace.replies(Opcode.OPEN) + trace.replies(Opcode.CREATE)
    assert [(r.brief.get("backing_id"), r.brief.get("open_flags") & FOPEN_PASSTHROUGH)
            for r in replies] == [(4242, FOPEN_PASSTHROUGH)] * 2
    assert not [e for e in trace.entries if e.record.is_ioctl]
    assert sorted(m.brief.get("fh") for _, m in trace.requests(Opcode.RELEASE)) == \
        sorted(r.brief.get("fh") for r in replies)


@mount_test
def test_passthrough_no_flag_is_an_ordinary_open(session: Session) -> None:
    data = _misbehaving(session, "passthrough-no-flag")
    assert (session.mnt / "f").read_bytes() == data
    trace = session.stop()
    trace.check()
    [(_, opened, _)] = trace.ioctls(DevIoctl.BACKING_OPEN)
    [reply] = trace.replies(Opcode.OPEN)
    assert reply.brief.get("backing_id") == opened.result
    assert not reply.brief.get("open_flags") & FOPEN_PASSTHROUGH
    assert [m for _, m in trace.requests(Opcode.READ) if m.brief.get("fh") == reply.brief.get("fh")]
    assert len(trace.ioctls(DevIoctl.BACKING_CLOSE)) == 1


@mount_test
def test_direct_io_overrides_passthrough(session: Session) -> None:
    data = _misbehaving(session, "direct-io-passthrough")
    assert (session.mnt / "f").read_bytes() == data
    trace = session.stop()
    trace.check()
    [reply] = trace.replies(Opcode.OPEN)
    assert reply.brief.get("open_flags") & (FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH) == \
        FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH
    reads = [m for _, m in trace.requests(Opcode.READ) if m.brief.get("fh") == reply.brief.get("fh")]
    assert reads and reads[0].brief.get("size") > 128 * 1024  # the app's size, no readahead


@mount_test
def test_writeback_cache_silently_disables_passthrough(session: Session) -> None:
    data = _misbehaving(session, "writeback-cache")
    assert (session.mnt / "f").read_bytes() == data
    trace = session.stop()
    trace.check()
    [init] = trace.replies(Opcode.INIT)
    flags = init.brief.get("flags") | init.brief.get("flags2") << 32
    assert flags & FUSE_WRITEBACK_CACHE and flags & FUSE_PASSTHROUGH
    [(_, refused, _)] = trace.ioctls(DevIoctl.BACKING_OPEN)
    assert (refused.result, refused.errno) == (-1, errno.EPERM)
    [reply] = trace.replies(Opcode.OPEN)
    assert (reply.brief.get("open_flags"), reply.brief.get("backing_id")) == (0, 0)
    assert trace.requests(Opcode.READ)


@mount_test
def test_per_open_backing_id_fails_a_concurrent_open(session: Session) -> None:
    data = _misbehaving(session, "per-open-backing-id")
    assert (session.mnt / "f").read_bytes() == data  # alone: fine
    with open(session.mnt / "f", "rb") as first:
        with pytest.raises(OSError) as exc:
            open(session.mnt / "f", "rb")
        assert exc.value.errno == errno.EIO
        assert first.read() == data
    trace = session.stop()
    trace.check()
    ids = [call.result for _, call, _ in trace.ioctls(DevIoctl.BACKING_OPEN)]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert sorted(c.fields["backing_id"] for _, c, _ in trace.ioctls(DevIoctl.BACKING_CLOSE)) == ids


@mount_test
def test_no_release_reply_blocks_background_requests(session: Session) -> None:
    """12 unanswered RELEASEs fill max_background: the next readahead never leaves.
    (A one-page file would still read: the kernel then reads synchronously.)"""
    data = _misbehaving(session, "no-release-reply", "--no-passthrough", size=65536)
    for _ in range(12):
        with open(session.mnt / "f", "rb") as f:
            assert f.read() == data
    outcome: list[Any] = []

    def read_13th() -> None:
        try:
            with open(session.mnt / "f", "rb") as f:
                outcome.append(f.read())
        except OSError as exc:
            outcome.append(exc.errno)

    reader = threading.Thread(target=read_13th, daemon=True)
    reader.start()
    reader.join(3)
    assert reader.is_alive(), "the 13th read should hang"
    trace = session.stop()  # lazy unmount: the hung reader keeps the mount busy
    reader.join(10)
    assert outcome == [errno.ENOTCONN]
    trace.check(unanswered=frozenset({Opcode.RELEASE}))
    releases = trace.requests(Opcode.RELEASE)
    assert len(releases) >= 12
    assert not [rec for _, rec, m in trace.messages()
                if rec.is_reply and m.brief.opcode == Opcode.RELEASE]


@mount_test
def test_stall_delays_the_reply(session: Session) -> None:
    _misbehaving(session, "stall=GETATTR:2", "-o", "attr_timeout=0", size=10)
    started = time.monotonic()
    assert os.stat(session.mnt / "f").st_size == 10
    assert time.monotonic() - started >= 2
    trace = session.stop()
    trace.check()
    [(i_req, getattr_req)] = trace.requests(Opcode.GETATTR)[:1]
    i_reply, _ = trace.reply(getattr_req.brief.unique)
    assert trace.ts(i_reply) - trace.ts(i_req) >= 2_000_000_000


# --- arguments --------------------------------------------------------------------------

def test_misbehave_switches_parse() -> None:
    parsed = parse(["leak-backing-id", "stall=getattr:1.5", "stall=14:2"])
    assert "leak-backing-id" in parsed and "close-twice" not in parsed
    assert parsed.stall(Opcode.GETATTR) == 1.5 and parsed.stall(Opcode.OPEN) == 2
    for bad in ("leak", "stall=GETATTR", "stall=NOPE:1", "stall=GETATTR:0"):
        with pytest.raises(ValueError):
            parse([bad])


def test_parse_args(tmp_path: Path) -> None:
    args = parse_args([str(tmp_path), "/mnt", "-o", "allow_other,entry_timeout=0.5",
                       "-o", "max_read=65536", "--threads", "2", "--misbehave", "close-twice"])
    assert args.mount_options.data(7).endswith("allow_other,max_read=65536")
    assert args.timeouts.entry == 0.5 and args.timeouts.attr == 1.0
    assert args.threads == 2 and "close-twice" in args.misbehave
    for bad in (["-o", "nosuchopt"], ["-o", "max_read"], ["--threads", "0"],
                ["--misbehave", "nope"], ["-o", "max_stack_depth=3"]):
        with pytest.raises(SystemExit):
            parse_args([str(tmp_path), "/mnt", *bad])


# --- the test helpers ---------------------------------------------------------------------

def _python(code: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **kw)


def test_cleanup_copes_with_a_process_already_gone(tmp_path: Path) -> None:
    proc = _python("pass")
    proc.wait(10)
    cleanup_mount(tmp_path, proc)  # not mounted, already reaped: nothing to do, no error
    cleanup_mount(tmp_path, None)
    assert proc.returncode == 0


def test_stop_process_kills_what_ignores_sigterm() -> None:
    proc = _python("import signal, sys, time\n"
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "print('ready', flush=True)\ntime.sleep(60)", stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop_process(proc, timeout=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    proc.stdout.close()


def test_wait_for_mount_fails_early_with_stderr(tmp_path: Path) -> None:
    proc = _python("import sys; sys.stderr.write('cannot mount: boom'); sys.exit(3)",
                   stderr=subprocess.PIPE)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="(?s)status 3.*boom") as exc:
        wait_for_mount(tmp_path, proc, timeout=30)
    assert time.monotonic() - started < 10, exc.value
    assert proc.stderr is not None
    proc.stderr.close()


def test_wait_for_mount_times_out(tmp_path: Path) -> None:
    proc = _python("import time; time.sleep(60)")
    try:
        with pytest.raises(RuntimeError, match="not mounted after"):
            wait_for_mount(tmp_path, proc, timeout=0.3)
    finally:
        stop_process(proc)


@mount_test
def test_cleanup_unmounts_after_the_server_died(requires_fuse: None, fs_dirs: FsDirs) -> None:
    argv = [*SERVER, str(fs_dirs.source), str(fs_dirs.mountpoint)]
    with mounted_server(argv, fs_dirs.mountpoint, cwd=REPO) as server:
        server.proc.kill()
        server.proc.wait(10)
        assert is_mounted(fs_dirs.mountpoint)  # a dead connection stays mounted
        with pytest.raises(OSError) as exc:
            os.listdir(fs_dirs.mountpoint)
        assert exc.value.errno == errno.ENOTCONN
        cleanup_mount(fs_dirs.mountpoint, server.proc)
        assert not is_mounted(fs_dirs.mountpoint)


@mount_test
def test_cleanup_lazily_unmounts_a_busy_mount(requires_fuse: None, fs_dirs: FsDirs) -> None:
    (fs_dirs.source / "f").write_bytes(b"x")
    argv = [*SERVER, str(fs_dirs.source), str(fs_dirs.mountpoint)]
    with mounted_server(argv, fs_dirs.mountpoint, cwd=REPO) as server:
        busy = os.open(fs_dirs.mountpoint / "f", os.O_RDONLY)
        try:
            assert subprocess.run(["umount", str(fs_dirs.mountpoint)],
                                  capture_output=True).returncode != 0  # EBUSY
            cleanup_mount(fs_dirs.mountpoint, server.proc)
            assert not is_mounted(fs_dirs.mountpoint)
            assert server.proc.returncode == 0
        finally:
            with pytest.raises(OSError):  # ENOTCONN: its FLUSH finds no server
                os.close(busy)
