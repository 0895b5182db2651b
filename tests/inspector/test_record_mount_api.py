"""The new mount API (fsopen/fsconfig/fsmount/move_mount, libfuse 3.17+'s first choice)
under `fusetrace record`: the server sees no error, does not fall back to mount(2), and
the mount reads as for a direct mount; the trace says it went that way (`fsmount`).

Also the kernel's behaviour `inspector/exchange/fsmount.py` is built on: `fd=` is resolved
at CMD_CREATE in the caller's descriptor table (and only as a string), and fsopen,
CMD_CREATE and fsmount check the caller's CAP_SYS_ADMIN.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest

from inspector import syscalls
from inspector.exchange import creds
from inspector.testing import decode_trace, recorded_server
from record_support import PASSTHROUGHFS, REPO, check_trace, events_of, fusetrace, need
from test_record_fidelity import FIDELITY_TIMEOUT, Case, _direct, _dirs, _inputs, _recorded, tree_of

CAP_SYS_ADMIN = 21
FSMOUNT_CASE = Case(
    "passthroughfs-fsmount", (),
    lambda b: [*PASSTHROUGHFS, str(b / "src"), str(b / "mnt"), "--mount-with", "fsmount"],
    lambda b: _dirs(b, "src"), after=lambda b: tree_of(b / "src"))
FALLBACK = "mounting with mount(2) instead"


@pytest.mark.requires_fuse
@pytest.mark.timeout(FIDELITY_TIMEOUT)
def test_fsmount_recorded_like_direct(isolated: Path, tmp_path: Path) -> None:
    need("git", "tar", "rsync")
    inputs = _inputs(tmp_path)
    direct = _direct(FSMOUNT_CASE, tmp_path / "direct", inputs)
    assert FALLBACK not in direct.output, direct.output  # direct, the new API worked
    recorded, trace = _recorded(FSMOUNT_CASE, tmp_path / "recorded", inputs)
    assert FALLBACK not in recorded.output and "failed" not in recorded.output, recorded.output
    assert recorded.mount == direct.mount
    assert recorded.seen == direct.seen
    assert recorded.after == direct.after
    assert recorded.status == direct.status == 0, recorded.output
    decoded = check_trace(trace)
    [connected] = events_of(decoded, "connected")
    assert connected["route"] == "fsmount"
    [mount] = events_of(decoded, "mount")
    items = mount["data"].split(",")
    assert items[0].startswith("fd=") and len(items) == len(set(k.split("=")[0] for k in items))
    assert (mount["source"], mount["fstype"]) == ("passthroughfs", "fuse.passthroughfs")
    calls = events_of(decoded, "server_mount_api")
    assert [c["call"] for c in calls][0] == "fsopen" and calls[-1]["call"] == "move_mount"
    assert all(c.get("errno", 0) == 0 and "recorder_error" not in c for c in calls), calls


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
def test_fsmount_recorded_as_mount2_would_be(isolated: Path) -> None:
    """The `mount` event of the new API's route holds what mount(2)'s holds."""
    events = {}
    for how in ("self", "fsmount"):
        base = isolated / how
        (base / "src").mkdir(parents=True)
        (base / "mnt").mkdir()
        trace = base / "t.fzt"
        argv = [*PASSTHROUGHFS, "-o", "default_permissions,max_read=65536", str(base / "src"),
                str(base / "mnt"), "--mount-with", how]
        with recorded_server(argv, base / "mnt", trace, timeout=20) as rec:
            (base / "mnt" / "f").write_text("x")
            assert rec.unmount_and_wait(timeout=30) == 0, rec.output()
        [mount] = events_of(check_trace(trace), "mount")
        events[how] = {k: v for k, v in mount.items() if k != "device"}
        events[how]["data"] = events[how]["data"].split(",", 1)[1]  # after fusetrace's fd=N
    assert events["fsmount"] == events["self"]
    assert "default_permissions" in events["self"]["data"].split(",")


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
def test_fsmount_without_cap_sys_admin_refused_as_directly(isolated: Path) -> None:
    """fsopen is made with the calling thread's credentials: a server lacking
    CAP_SYS_ADMIN is refused (EPERM) as directly, by the kernel, not by the recorder."""
    need("setpriv")
    (isolated / "src").mkdir()
    (isolated / "mnt").mkdir()
    argv = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--",
            *PASSTHROUGHFS, str(isolated / "src"), str(isolated / "mnt"), "--mount-with",
            "fsmount"]
    direct = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    refused = [line for line in direct.stderr.splitlines() if "not permitted" in line]
    assert direct.returncode == 1 and len(refused) == 2, direct.stderr  # fsopen, mount(2)
    trace = isolated / "t.fzt"
    res = fusetrace("record", "-w", str(trace), "--", *argv)
    assert res.returncode == 2 and all(line in res.stderr for line in refused), res.stderr
    [fsopen] = events_of(decode_trace(trace), "server_mount_api")
    assert fsopen["call"] == "fsopen" and fsopen["errno"] == errno.EPERM, fsopen
    assert "recorder_error" not in fsopen


# --- the kernel's behaviour the recorder relies on (6.18) ---------------------------------

def _fuse_context(fd_value: str) -> int:
    context = syscalls.fsopen("fuse")
    for key, value in (("source", "fsmount-test"), ("fd", fd_value), ("rootmode", "40000"),
                       ("user_id", "0"), ("group_id", "0")):
        syscalls.fsconfig(context, syscalls.Fsconfig.SET_STRING, key, value)
    return context


@pytest.mark.requires_fuse
def test_fd_option_is_resolved_at_create_in_the_callers_table() -> None:
    """...and a context whose CMD_CREATE failed is spent (EBUSY): the recorder must make
    the server's first CMD_CREATE itself."""
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    spare = os.dup(device)
    contexts = [_fuse_context(str(spare)), _fuse_context(str(spare))]
    a, b = socket.socketpair()
    try:
        os.dup2(a.fileno(), spare)  # the number now names a socket, as the relay would
        for command, err in ((syscalls.Fsconfig.CMD_CREATE, errno.EINVAL),
                             (syscalls.Fsconfig.CMD_CREATE, errno.EBUSY)):
            with pytest.raises(OSError) as refused:
                syscalls.fsconfig(contexts[0], command)
            assert refused.value.errno == err
        os.dup2(device, spare)
        syscalls.fsconfig(contexts[1], syscalls.Fsconfig.CMD_CREATE)  # /dev/fuse again: made
    finally:
        for fd in (*contexts, spare, device):
            os.close(fd)
        a.close()
        b.close()


@pytest.mark.requires_fuse
def test_fd_option_takes_no_descriptor_and_a_later_one_wins() -> None:
    """SET_FD is refused for `fd`; a second SET_STRING replaces the first (the recorder
    sets its own at CMD_CREATE over the server's)."""
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    context = _fuse_context("999999")
    try:
        with pytest.raises(OSError) as refused:
            syscalls.fsconfig(context, syscalls.Fsconfig.SET_FD, "fd", None, device)
        assert refused.value.errno == errno.EINVAL
        syscalls.fsconfig(context, syscalls.Fsconfig.SET_STRING, "fd", str(device))
        syscalls.fsconfig(context, syscalls.Fsconfig.CMD_CREATE)
    finally:
        os.close(context)
        os.close(device)


@pytest.mark.requires_fuse
def test_create_fsopen_fsmount_need_the_callers_cap_sys_admin() -> None:
    mine = creds.current()
    without = dataclasses.replace(mine, cap_effective=mine.cap_effective & ~(1 << CAP_SYS_ADMIN))
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    context = _fuse_context(str(device))
    try:
        with creds.assumed(without):
            with pytest.raises(PermissionError):
                syscalls.fsopen("fuse")
            with pytest.raises(PermissionError):
                syscalls.fsconfig(context, syscalls.Fsconfig.CMD_CREATE)
        syscalls.fsconfig(context, syscalls.Fsconfig.CMD_CREATE)
        with creds.assumed(without):
            with pytest.raises(PermissionError):
                syscalls.fsmount(context)
        os.close(syscalls.fsmount(context))  # detached, never attached: gone with its fd
    finally:
        os.close(context)
        os.close(device)
