"""The seccomp ioctl trap on its own: a real child process, real seccomp, real /dev/fuse.

End-to-end passthrough through the recorder is tested in test_record.py; here the trap's
plumbing is pinned down: which ioctls it takes over, what the caller gets back, what is
recorded, and that everything else runs untouched. Each test runs twice: with the C loop
(`_trapfast`, where BACKING_OPEN/CLOSE are handled) and with everything in Python.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from c_extensions import c_extension

from dissectors import FuseOutHeader
from dissectors.constants import FUSE_INIT_EXT, FUSE_PASSTHROUGH
from dissectors.ioctls import DevIoctl
from dissectors.offsets import unique_of
from dissectors.structs import FuseInitOut
from inspector import syscalls
from inspector.exchange import creds
from inspector.exchange import trap as trap_module
from inspector.exchange.trap import IoctlTrap
from inspector.testing import wait_for_mount
from traces import Kind, TraceReader, TraceWriter
from traces.records import IOCTL_KEYS

CHILD = r"""
import fcntl, json, os, struct, sys
relay = int(sys.argv[1])
backing = os.open(sys.argv[2], os.O_RDONLY)
out = {}
def call(name, fd, cmd, arg):
    try:
        out[name] = fcntl.ioctl(fd, cmd, arg)
    except OSError as exc:
        out[name] = -exc.errno
call("backing_open", relay, 0x4010e501, bytearray(struct.pack("<iIQ", backing, 0, 0)))
call("backing_close", relay, 0x4004e502, bytearray(struct.pack("<I", 7)))
fresh = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)  # libfuse's clone_fd, per thread
call("clone", fresh, 0x8004e500, bytearray(struct.pack("<I", relay)))
out["clone_is_relay"] = os.fstat(fresh).st_ino == os.fstat(relay).st_ino
out["clone_cloexec"] = bool(fcntl.fcntl(fresh, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
call("sync_init", relay, 0xe503, 0)
null = os.open("/dev/null", os.O_RDONLY)
other = os.open("/dev/fuse", os.O_RDWR)
call("clone_other", other, 0x8004e500, bytearray(struct.pack("<I", null)))
call("not_the_relay", null, 0x4004e502, bytearray(4))
call("not_fuse", relay, 0x5401, bytearray(64))  # TCGETS: not trapped at all
print(json.dumps({"out": out, "backing_fd": backing}))
"""


@pytest.fixture(params=["c", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    """Whether the trap's C loop is used (a missing build fails: see c_extensions)."""
    if request.param == "c":
        c_extension("inspector.exchange._trapfast")
    return request.param == "c"


def run_trapped(trace: Path, child_end: socket.socket, device: int, script: str,
                args: list[str], native: bool, on_mount: object = None
                ) -> tuple[bytes, int, int]:
    """Run `script` as a child under the trap (its relay end passed as child_end):
    (its stdout, its pid, how many ioctls the C loop made)."""
    with TraceWriter(str(trace), {"source": "test"}) as writer:
        trap = IoctlTrap(child_end.fileno(), device, writer, on_mount=on_mount,  # type: ignore[arg-type]
                         native=native)
        proc = subprocess.Popen([sys.executable, "-c", script, *args],
                                pass_fds=[child_end.fileno()], preexec_fn=trap.child_setup,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        trap.start(proc)
        out, err = proc.communicate(timeout=20)
        trap.stop()
    assert proc.returncode == 0, err.decode()
    assert (trap.fast is not None) == (native and trap_module._trapfast is not None)
    return out, proc.pid, trap.fast.handled if trap.fast else 0


@pytest.fixture
def skip_without_seccomp() -> None:
    reason = IoctlTrap.available()
    if reason:
        pytest.skip(reason)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")


@pytest.mark.timeout(30)
def test_trap_takes_over_fuse_ioctls_on_the_relay_only(skip_without_seccomp: None,
                                                      tmp_path: Path, native: bool) -> None:
    trace = tmp_path / "trap.fzt"
    backing = tmp_path / "backing.bin"
    backing.write_bytes(b"x" * 10)
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)  # no mount: the kernel says EPERM
    try:
        out, pid, in_c = run_trapped(trace, child_end, device, CHILD,
                                     [str(child_end.fileno()), str(backing)], native)
    finally:
        os.close(device)
        relay.close()
        child_end.close()
    result = json.loads(out)
    got = result["out"]
    # Performed on the real device (an unmounted one refuses with EPERM), not the socket
    # (which would have said ENOTTY):
    assert got["backing_open"] == -errno.EPERM
    assert got["backing_close"] == -errno.EPERM
    assert got["clone"] == 0  # emulated: the fresh fd now reaches the relay
    assert got["clone_is_relay"] and got["clone_cloexec"]
    assert got["clone_other"] == -errno.EINVAL  # not naming the relay: the device's own answer
    assert got["sync_init"] == -errno.ENOTTY
    assert got["not_the_relay"] == -errno.ENOTTY  # /dev/null's own answer: continued untouched
    assert got["not_fuse"] == -errno.ENOTTY  # a socket's answer to TCGETS: never trapped

    records = [r for r in TraceReader(str(trace)) if r.kind is Kind.IOCTL]
    assert [r.meta["cmd"] for r in records] == [
        DevIoctl.BACKING_OPEN, DevIoctl.BACKING_CLOSE, DevIoctl.CLONE, DevIoctl.SYNC_INIT]
    opened = records[0].meta
    assert opened["errno"] == errno.EPERM and opened["result"] == -1
    assert opened["fd"] == result["backing_fd"]  # the server's fd number, as the server passed it
    assert opened["path"] == str(backing)  # the path behind it, read at call time
    assert opened["arg"][:4] == result["backing_fd"].to_bytes(4, "little")  # as the server wrote it
    assert opened["tid"] == opened["pid"] == pid
    assert "note" in records[2].meta and "note" in records[3].meta
    assert set(records[0].meta) == set(records[2].meta) - {"note"}  # the same fields either way
    assert list(opened) == list(IOCTL_KEYS)  # in TraceWriter.ioctl's order, from C too
    assert in_c == (2 if native else 0)  # BACKING_OPEN and BACKING_CLOSE; the rest in Python


def _long_path(root: Path, length: int) -> Path:
    """A file whose absolute path is exactly `length` bytes (directories of ≤ 200 bytes)."""
    path = root
    while len(str(path)) + 1 + 200 < length - 2:
        path = path / ("d" * 200)
    path.mkdir(parents=True, exist_ok=True)
    leaf = path / ("f" * (length - len(str(path)) - 1))
    leaf.write_bytes(b"x")
    assert len(str(leaf)) == length
    return leaf


@pytest.mark.timeout(30)
@pytest.mark.parametrize("length", [406, 3000])
def test_backing_paths_of_any_length_are_recorded_whole(skip_without_seccomp: None,
                                                          tmp_path: Path, native: bool,
                                                          length: int) -> None:
    """The C trap once cut them at 255 bytes; the Python trap never did."""
    backing = _long_path(tmp_path, length)
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        _, _, in_c = run_trapped(tmp_path / "t.fzt", child_end, device, CHILD,
                                 [str(child_end.fileno()), str(backing)], native)
    finally:
        os.close(device)
        relay.close()
        child_end.close()
    opened = next(r.meta for r in TraceReader(str(tmp_path / "t.fzt"))
                  if r.kind is Kind.IOCTL and r.meta["cmd"] == DevIoctl.BACKING_OPEN)
    assert opened["path"] == str(backing)
    assert in_c == (2 if native else 0)  # the C loop recorded it, not a fallback


@pytest.mark.timeout(30)
def test_without_the_c_loop_python_does_it_all_and_says_how_to_build_it(
        skip_without_seccomp: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(trap_module, "_trapfast", None)
    backing = tmp_path / "backing.bin"
    backing.write_bytes(b"x")
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        out, _, in_c = run_trapped(tmp_path / "t.fzt", child_end, device, CHILD,
                                   [str(child_end.fileno()), str(backing)], native=True)
    finally:
        os.close(device)
        relay.close()
        child_end.close()
    assert json.loads(out)["out"]["backing_open"] == -errno.EPERM and in_c == 0
    said = [r.getMessage() for r in caplog.records if r.name == trap_module.__name__]
    assert said == [trap_module.NOT_BUILT] and "pip install -e ." in said[0]


def test_available_says_why_not() -> None:
    reason = IoctlTrap.available()
    assert reason is None or isinstance(reason, str) and reason


DEVICE_OPENER = r"""
import ctypes, json, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)   # what libfuse 2 / bindfs do as root
is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
data = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions"
res = libc.mount(b"devopen", sys.argv[1].encode(), b"fuse.devopen", 6, data.encode())
print(json.dumps({"socket": is_socket, "mount": res, "errno": ctypes.get_errno()}))
"""


@pytest.mark.timeout(30)
def test_server_that_opens_dev_fuse_and_mounts_itself(skip_without_seccomp: None,
                                                     tmp_path: Path, native: bool) -> None:
    """Its open of /dev/fuse returns the relay socket; its mount(2) is done for real."""
    from inspector.exchange.trap import ServerMount

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    seen: list[ServerMount] = []
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)

    def mount_for_real(req: ServerMount) -> int:
        seen.append(req)
        try:
            syscalls.mount(req.source, req.target, req.fstype, req.flags,
                           f"fd={device},{req.data}")
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    try:
        out, _, _ = run_trapped(tmp_path / "t.fzt", child_end, device, DEVICE_OPENER,
                                [str(mnt)], native, on_mount=mount_for_real)
        got = json.loads(out)
        assert got == {"socket": True, "mount": 0, "errno": got["errno"]}
        mounted = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if f" {mnt} " in line]
        assert mounted and "fuse.devopen" in mounted[0]
        assert seen[0].target == str(mnt) and "fd=" not in seen[0].data
        assert "default_permissions" in seen[0].data
    finally:
        if any(f" {mnt} " in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            syscalls.umount2(str(mnt), syscalls.MNT_DETACH)
        os.close(device)
        relay.close()
        child_end.close()
    events = [r.meta for r in TraceReader(str(tmp_path / "t.fzt")) if r.kind is Kind.EVENT]
    assert [e["event"] for e in events] == ["device_open", "server_mount"]


THREADED = r"""
import fcntl, json, os, struct, sys, threading
relay, path = int(sys.argv[1]), sys.argv[2]
done, lock, start = [], threading.Lock(), threading.Barrier(4)
def call(cmd, arg):
    try:
        return fcntl.ioctl(relay, cmd, bytearray(arg))
    except OSError as exc:
        return -exc.errno
def worker():
    tid, mine = threading.get_native_id(), []
    start.wait()
    for _ in range(30):
        fd = os.open(path, os.O_RDONLY)
        backing_id = call(0x4010e501, struct.pack("<iIQ", fd, 0, 0))
        os.close(fd)
        mine.append([tid, 0x4010e501, backing_id])
        if backing_id > 0:
            mine.append([tid, 0x4004e502, call(0x4004e502, struct.pack("<I", backing_id))])
    with lock:
        done.extend(mine)
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(done))
"""


def _connect_with_passthrough(device: int, mnt: Path) -> None:
    """Mount `device` on `mnt` and answer its INIT with passthrough on, so that
    BACKING_OPEN succeeds; nothing else is asked of it while nobody uses the mount."""
    syscalls.mount("trap-test", str(mnt), "fuse.trap-test", 0,
                   f"fd={device},rootmode=40000,user_id=0,group_id=0")
    init = os.read(device, 1 << 21)
    unique = unique_of(init)
    reply = FuseOutHeader(unique=unique) / FuseInitOut(
        flags=FUSE_INIT_EXT, flags2=FUSE_PASSTHROUGH >> 32, max_stack_depth=1, max_write=4096)
    os.write(device, bytes(reply))


def _run_with_passthrough(trace: Path, mnt: Path, script: str, backing: Path,
                          native: bool) -> tuple[bytes, int, int]:
    """`run_trapped(script, relay fd, backing)` on a real connection mounted on `mnt` with
    passthrough on; unmounted and closed whatever happens."""
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        _connect_with_passthrough(device, mnt)
        return run_trapped(trace, child_end, device, script,
                           [str(child_end.fileno()), str(backing)], native)
    finally:
        if any(f" {mnt} " in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            syscalls.umount2(str(mnt), syscalls.MNT_DETACH)
        os.close(device)
        relay.close()
        child_end.close()


@pytest.mark.timeout(60)
def test_backing_ids_from_several_threads_at_once(skip_without_seccomp: None, tmp_path: Path,
                                                  native: bool) -> None:
    """Four server threads register and drop backing ids at the same time: every call
    gets the kernel's answer and is recorded once, with that answer and its thread."""
    mnt, backing = tmp_path / "mnt", tmp_path / "backing.bin"
    mnt.mkdir()
    backing.write_bytes(b"x" * 100)
    trace = tmp_path / "t.fzt"
    out, pid, in_c = _run_with_passthrough(trace, mnt, THREADED, backing, native)
    calls = sorted(tuple(c) for c in json.loads(out))
    assert len(calls) == 4 * 30 * 2  # every BACKING_OPEN succeeded and was closed
    assert all(result > 0 for _, cmd, result in calls if cmd == DevIoctl.BACKING_OPEN)
    assert all(result == 0 for _, cmd, result in calls if cmd == DevIoctl.BACKING_CLOSE)
    assert len({tid for tid, _, _ in calls}) == 4
    records = [r.meta for r in TraceReader(str(trace)) if r.kind is Kind.IOCTL]
    assert sorted((m["tid"], m["cmd"], m["result"]) for m in records) == calls
    assert all(m["pid"] == pid and m["errno"] == 0 for m in records)
    assert all(m["path"] == str(backing) for m in records if m["cmd"] == DevIoctl.BACKING_OPEN)
    assert in_c == (len(calls) if native else 0)


CHANGES_IDENTITY = r"""
import fcntl, json, os, struct, sys
relay, fd = int(sys.argv[1]), os.open(sys.argv[2], os.O_RDONLY)
def backing_open():
    try:
        return fcntl.ioctl(relay, 0x4010e501, bytearray(struct.pack("<iIQ", fd, 0, 0)))
    except OSError as exc:
        return -exc.errno
got = [backing_open()]
os.seteuid(65534)  # effective capabilities gone: the kernel refuses BACKING_OPEN
got.append(backing_open())
os.seteuid(0)
got.append(backing_open())
print(json.dumps(got))
"""


@pytest.mark.timeout(60)
def test_a_thread_that_changes_identity_is_seen_with_the_new_one(
        skip_without_seccomp: None, tmp_path: Path, native: bool) -> None:
    """The C loop remembers threads it found with the recorder's credentials; a seteuid
    in between must make it look again (and hand the call to Python, which takes them)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mnt, backing = tmp_path / "mnt", tmp_path / "backing.bin"
    mnt.mkdir()
    backing.write_bytes(b"x")
    out, _, in_c = _run_with_passthrough(tmp_path / "t.fzt", mnt, CHANGES_IDENTITY, backing,
                                         native)
    first, refused, again = json.loads(out)
    assert first > 0 and refused == -errno.EPERM and again > 0
    records = [r.meta for r in TraceReader(str(tmp_path / "t.fzt")) if r.kind is Kind.IOCTL]
    assert [m["errno"] for m in records] == [0, errno.EPERM, 0]
    assert in_c == (2 if native else 0)  # the refused one was made by Python as euid 65534


STRANDED = r"""
import fcntl, json, os, struct, sys
relay, fd = int(sys.argv[1]), os.open(sys.argv[2], os.O_RDONLY)
os.setgroups([4321])  # not the recorder's credentials: the trap takes these for the call
def backing_open():
    try:
        return fcntl.ioctl(relay, 0x4010e501, bytearray(struct.pack("<iIQ", fd, 0, 0)))
    except OSError as exc:
        return -exc.errno
print(json.dumps([backing_open(), backing_open()]))
"""


@pytest.mark.timeout(60)
def test_a_failed_switch_back_stops_the_trap_and_closes_what_it_opened(
        skip_without_seccomp: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trap thread made a BACKING_OPEN with the server thread's credentials and could
    not take its own back: it must not go on as the server. The call gets EIO, the id the
    kernel gave is closed (from another thread), the record says why, later trapped calls
    get ENOSYS, and `failed` tells the session to end with exit 1."""
    if os.geteuid() != 0:
        pytest.skip("needs root")

    def refused(nrs: tuple[int, ...], mine: creds.Creds) -> None:
        raise OSError(errno.EPERM, "setresuid: Operation not permitted")

    monkeypatch.setattr(creds, "_take_back", refused)  # the kernel refusing the way back
    mnt, backing, trace = tmp_path / "mnt", tmp_path / "backing.bin", tmp_path / "t.fzt"
    mnt.mkdir()
    backing.write_bytes(b"x")
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        _connect_with_passthrough(device, mnt)
        with TraceWriter(str(trace), {"source": "test"}) as writer:
            trap = IoctlTrap(child_end.fileno(), device, writer)
            proc = subprocess.Popen([sys.executable, "-c", STRANDED, str(child_end.fileno()),
                                     str(backing)], pass_fds=[child_end.fileno()],
                                    preexec_fn=trap.child_setup, stdout=subprocess.PIPE)
            trap.start(proc)
            out, _ = proc.communicate(timeout=20)
            assert trap.failed and "could not take its own credentials back" in trap.failed
            trap.stop()
        records = list(TraceReader(str(trace)))
        opened = next(r.meta for r in records if r.kind is Kind.IOCTL)
        backing_id = int(opened["recorder_error"].split("backing id ")[1].split()[0])
        with pytest.raises(OSError):  # already closed by the trap's stop()
            fcntl.ioctl(device, DevIoctl.BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")))
    finally:
        syscalls.umount2(str(mnt), syscalls.MNT_DETACH)
        os.close(device)
        relay.close()
        child_end.close()
    assert json.loads(out) == [-errno.EIO, -errno.ENOSYS]
    assert opened["errno"] == errno.EIO and opened["result"] == -1
    assert backing_id > 0
    events = [r.meta for r in records if r.kind is Kind.EVENT]
    assert any(e.get("recorder_error") == trap.failed for e in events)
    assert any(e.get("reason", "").endswith(f"backing id {backing_id}, opened by a call after "
                                            "which the trap stopped: closed") for e in events)


#: `fusetrace` with the kernel refusing the trap thread's way back to its own credentials
REFUSING_RECORDER = """
import errno, sys
from inspector.exchange import creds
def refused(nrs, mine):
    raise OSError(errno.EPERM, "setresuid: Operation not permitted")
creds._take_back = refused
from inspector.cli import main
sys.exit(main(sys.argv[1:]))
"""
#: the bundled server, its credentials differing from the recorder's by a group
OTHER_GROUPS = ("import os, sys; os.setgroups([4321]); "
                "os.execv(sys.executable, [sys.executable, '-m', 'inspector.passthroughfs', *sys.argv[1:]])")


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
def test_record_ends_with_exit_1_when_the_trap_cannot_take_its_credentials_back(
        skip_without_seccomp: None, isolated: Path, fs_dirs: tuple[Path, Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    src, mnt = fs_dirs
    (src / "f").write_bytes(b"data")
    trace = isolated / "t.fzt"
    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-P", "-c", REFUSING_RECORDER, "record", "-q", "-w", str(trace),
            "--", sys.executable, "-c", OTHER_GROUPS, str(src), str(mnt)]
    rec = subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    early = ""  # what the recorder said if it ended before the mount was seen
    try:
        try:  # the mount(2) is made with the server's credentials too: it may fail there
            wait_for_mount(mnt, rec, 20)
        except RuntimeError as exc:
            early = str(exc)  # its stderr, read by wait_for_mount: checked below
        else:
            try:
                (mnt / "f").read_bytes()  # its open makes the BACKING_OPEN
            except OSError:
                pass  # the server got EIO for it: its open may fail
        _, err = rec.communicate(timeout=30)  # fusetrace ends the session by itself
        err = early + err
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait(10)
    assert rec.returncode == 1, err
    assert "could not take its own credentials back" in err and "the recording ended there" in err
    metas = [r.meta for r in TraceReader(str(trace))]
    assert any("could not take its own credentials back" in (m.get("recorder_error") or "")
               for m in metas)
    [end] = [m for m in metas if m.get("event") == "session_end"]
    assert end["exit_code"] == 1 and end["reason"] == "recorder error"


OPENS = r"""
import json, os, sys
where = sys.argv[1]
os.chdir(where)
out = {}
for name, how in (("absolute", lambda: os.open(os.path.join(where, "inside", "f"), os.O_RDONLY)),
                  ("relative", lambda: os.open("inside/g", os.O_CREAT | os.O_WRONLY, 0o644)),
                  ("outside", lambda: os.open(os.path.join(where, "outside"), os.O_RDONLY))):
    try:
        fd = how()
        out[name] = os.readlink(f"/proc/self/fd/{fd}")
        os.close(fd)
    except OSError as exc:
        out[name] = -exc.errno
print(json.dumps(out))
"""


@pytest.mark.timeout(30)
def test_other_opens_are_answered_by_on_open(skip_without_seccomp: None, tmp_path: Path) -> None:
    """With `on_open` (a replay's, for a mountpoint that is not there), every open the
    server makes is handed over with its path made absolute: answered with a descriptor
    of ours, or let run."""
    (tmp_path / "inside").mkdir()
    (tmp_path / "outside").write_bytes(b"real")
    seen = []

    def on_open(request: trap_module.ServerOpen) -> int | None:
        seen.append(request.path)
        if request.path.startswith(str(tmp_path / "inside") + "/"):
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return None

    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with TraceWriter(str(tmp_path / "t.fzt"), {"source": "test"}) as writer:
            trap = IoctlTrap(child_end.fileno(), -1, writer, native=False, on_open=on_open)
            proc = subprocess.Popen([sys.executable, "-c", OPENS, str(tmp_path)],
                                    preexec_fn=trap.child_setup, stdout=subprocess.PIPE)
            trap.start(proc)
            out, _ = proc.communicate(timeout=20)
            trap.stop()
    finally:
        relay.close()
        child_end.close()
    got = json.loads(out)
    assert got == {"absolute": "/dev/null", "relative": "/dev/null",
                   "outside": str(tmp_path / "outside")}
    assert {str(tmp_path / "inside" / "f"), str(tmp_path / "inside" / "g")} <= set(seen)
    assert not (tmp_path / "inside" / "g").exists()


def test_the_fd_of_either_backing_open_form_is_where_the_trap_takes_it() -> None:
    """One ioctl number, two argument structs (mainline fuse_backing_map, Android V0's
    fuse_passthrough_out): the trap takes the backing fd from one offset for both."""
    from dissectors.ids import field_offsets
    from dissectors.ioctls import DevIoctl, FuseBackingMap, FusePassthroughOut

    at = trap_module._FD_AT[DevIoctl.BACKING_OPEN]
    assert at == field_offsets(FuseBackingMap)["fd"][0] == field_offsets(FusePassthroughOut)["fd"][0]
