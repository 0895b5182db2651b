"""The ordinary-user tests' private namespace leaves the host as it was: /dev/fuse keeps
its mode, /tmp gets no 0777 directories, and nothing stays mounted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from host_state import host_state
from private_host import give_to_nobody, private_host
from record_support import AS_NOBODY, dev_fuse_mode


def _mounts() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return f.read()


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a mount namespace")


def test_chmod_of_dev_fuse_inside_stays_inside(root_only: None, tmp_path: Path) -> None:
    before, mounts, tmp_entries = host_state(), _mounts(), set(os.listdir("/tmp"))
    (tmp_path / "dev").mkdir()
    home = tmp_path / "nobody"
    home.mkdir(mode=0o700)
    give_to_nobody(home)
    with private_host(tmp_path / "dev", [home], 0o600):
        with dev_fuse_mode(0o666):
            assert os.stat("/dev/fuse").st_mode & 0o777 == 0o666
            seen = subprocess.run([*AS_NOBODY, "sh", "-c", f"test -r /dev/fuse && touch {home}/x"],
                                  timeout=10)
            assert seen.returncode == 0, "nobody reaches its own directory and the node"
        assert os.stat("/dev/fuse").st_rdev == os.makedev(10, 229)
    assert host_state() == before
    assert _mounts() == mounts
    assert set(os.listdir("/tmp")) == tmp_entries
    assert (home / "x").stat().st_uid == 65534


def test_dev_fuse_mode_refuses_the_hosts_node() -> None:
    with pytest.raises(AssertionError, match="outside a private namespace"):
        with dev_fuse_mode(0o666):
            pass  # never reached
