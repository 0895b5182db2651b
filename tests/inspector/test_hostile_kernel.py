"""The kernel feature probes (`inspector.features`): they try the feature, say why it is
missing in one line, and leave nothing behind (no mount, no directory, no filter)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from dissectors import FuseInHeader
from dissectors.constants import FUSE_INIT_EXT, FUSE_PASSTHROUGH, Opcode
from dissectors.structs import FuseInitIn, FuseInitOut
from inspector import features
from inspector.features import _try_backing_open


def _probe_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("fusetrace-probe-")}


def test_the_passthrough_probe_leaves_no_mount_and_no_directory() -> None:
    before = _probe_dirs()
    features.passthrough.cache_clear()
    reason = features.passthrough()
    assert reason is None or (reason and "\n" not in reason)
    assert "fusetrace-probe" not in Path("/proc/self/mountinfo").read_text()
    assert _probe_dirs() == before


def _init_request(flags: int, flags2: int) -> bytes:
    return bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) /
                 FuseInitIn(minor=45, flags=flags, flags2=flags2))


@pytest.mark.parametrize("flags, flags2, reason", [
    (0, 0, "the kernel does not offer FUSE_PASSTHROUGH in INIT (no passthrough before 6.9)"),
    (FUSE_INIT_EXT, FUSE_PASSTHROUGH >> 32,
     "FUSE_DEV_IOC_BACKING_OPEN refused: Inappropriate ioctl for device"),
])
def test_a_kernel_without_passthrough_is_named_by_what_it_refused(flags: int, flags2: int,
                                                                  reason: str) -> None:
    """A socket standing in for /dev/fuse: an INIT without the flag (a kernel before 6.9),
    or with it but no ioctl behind it (ENOTTY, as a kernel without the ioctl answers)."""
    kernel, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with kernel, device:
        kernel.send(_init_request(flags, flags2))
        assert _try_backing_open(device.fileno()) == reason
        if flags:  # it answered INIT asking for passthrough, as a server would
            reply = FuseInitOut(kernel.recv(4096)[16:])
            assert reply.max_stack_depth == 1 and int(reply.flags2) << 32 == FUSE_PASSTHROUGH


def _seccomp_status() -> list[str]:
    return [line for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith(("Seccomp", "NoNewPrivs"))]


def test_the_seccomp_probe_filters_only_its_child() -> None:
    before = _seccomp_status()
    features.seccomp_user_notification.cache_clear()
    reason = features.seccomp_user_notification()
    assert reason is None or (reason and "\n" not in reason)
    assert _seccomp_status() == before  # the filter went with the child
