"""Shared fixtures: FUSE availability, and fresh source/mountpoint directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest

from host_state import host_state
from inspector import features
from inspector.testing import cleanup_mount, fuse_available, is_mounted

#: marker → (what it needs, the probe saying why not); probes run once, only when used
_NEEDS: dict[str, tuple[str, Callable[[], str | None]]] = {
    "requires_fuse": ("FUSE mounts unavailable", fuse_available),
    "requires_passthrough": ("FUSE passthrough unavailable", features.passthrough),
    "requires_seccomp_notify": ("seccomp user notification unavailable",
                                features.seccomp_user_notification),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_fuse: skip (saying why) unless FUSE mounts work here (root, /dev/fuse)")
    config.addinivalue_line(
        "markers", "requires_passthrough: skip (saying why) unless a real BACKING_OPEN works here")
    config.addinivalue_line(
        "markers", "requires_seccomp_notify: skip (saying why) unless the recorder's seccomp "
                   "trap can be installed here")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (what, probe) in _NEEDS.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        reason = probe() if marked else None
        if reason:
            skip = pytest.mark.skip(reason=f"{what}: {reason}")
            for item in marked:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def host_untouched() -> Iterator[None]:
    """Fails the session if any test changed /dev/fuse or /tmp (mode, owner, device)."""
    before = host_state()
    yield
    assert host_state() == before, "the tests changed the host's /dev/fuse or /tmp"


@pytest.fixture
def requires_fuse() -> None:
    """For tests that cannot carry the marker (e.g. a fixture needing a mount)."""
    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE mounts unavailable: {reason}")


class FsDirs(NamedTuple):
    source: Path
    mountpoint: Path


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of the test module's SMALL_DISK bytes (default 64 KiB) for this test alone,
    unmounted whatever happens: a disk that fills up for real."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    size = getattr(request.module, "SMALL_DISK", 64 << 10)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "fusetrace-full",
                    str(disk)], check=True, timeout=30)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True, timeout=30)


@pytest.fixture
def fs_dirs(tmp_path: Path) -> Iterator[FsDirs]:
    """An empty SOURCE and MOUNTPOINT; whatever ends up mounted there is undone after the
    test, and the test fails if anything still is."""
    dirs = FsDirs(tmp_path / "source", tmp_path / "mnt")
    dirs.source.mkdir()
    dirs.mountpoint.mkdir()
    yield dirs
    leftover = is_mounted(dirs.mountpoint)
    cleanup_mount(dirs.mountpoint)
    assert not leftover, f"{dirs.mountpoint} was still mounted after the test"
