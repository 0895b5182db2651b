"""The seccomp ioctl trap on its own: a real child process, real seccomp, real /dev/fuse.

End-to-end passthrough through the recorder is tested in test_record.py; here the trap's
plumbing is pinned down: which ioctls it takes over, what the caller gets back, what is
recorded, and that everything else runs untouched.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors.ioctls import DevIoctl
from inspector.record.trap import IoctlTrap
from traces import Kind, TraceReader, TraceWriter

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


def run_trapped(trace: Path, child_end: socket.socket, device: int, script: str,
                args: list[str], on_mount: object = None) -> tuple[bytes, int]:
    """Run `script` as a child under the trap (its relay end passed as child_end):
    (its stdout, its pid)."""
    with TraceWriter(str(trace), {"source": "test"}) as writer:
        trap = IoctlTrap(child_end.fileno(), device, writer, on_mount=on_mount)  # type: ignore[arg-type]
        proc = subprocess.Popen([sys.executable, "-c", script, *args],
                                pass_fds=[child_end.fileno()], preexec_fn=trap.child_setup,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        trap.start(proc)
        out, err = proc.communicate(timeout=20)
        trap.stop()
    assert proc.returncode == 0, err.decode()
    return out, proc.pid


@pytest.fixture
def skip_without_seccomp() -> None:
    reason = IoctlTrap.available()
    if reason:
        pytest.skip(reason)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")


@pytest.mark.timeout(30)
def test_trap_takes_over_fuse_ioctls_on_the_relay_only(skip_without_seccomp: None,
                                                      tmp_path: Path) -> None:
    trace = tmp_path / "trap.fzt"
    backing = tmp_path / "backing.bin"
    backing.write_bytes(b"x" * 10)
    relay, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)  # no mount: the kernel says EPERM
    try:
        out, pid = run_trapped(trace, child_end, device, CHILD,
                               [str(child_end.fileno()), str(backing)])
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
                                                     tmp_path: Path) -> None:
    """Its open of /dev/fuse returns the relay socket; its mount(2) is done for real."""
    from inspector import syscalls
    from inspector.record.trap import ServerMount

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
        out, _ = run_trapped(tmp_path / "t.fzt", child_end, device, DEVICE_OPENER, [str(mnt)],
                             on_mount=mount_for_real)
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
