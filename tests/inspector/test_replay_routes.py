"""A replayed server gets its connection the way it got it when recorded (the trace's
`connected` route): the bundled passthroughfs mounting by itself (`device-open`: its own
open of /dev/fuse and mount(2)) and through the fusermount3 helper (`helper`, as Go
servers do), each replayed with its command line as typed, nothing mounted, and no
difference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inspector.replay import replay
from inspector.testing import decode_trace, fuse_available, is_mounted, recorded_server
from record_support import PASSTHROUGHFS


def _events(trace: Path, name: str) -> list[dict[str, object]]:
    return [e.record.meta for e in decode_trace(trace).entries
            if e.record.is_event and e.record.event == name]


@pytest.mark.requires_fuse
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mount_with, route, program", [
    ("self", "device-open", "python"), ("fusermount3", "helper", "fusermount3")])
def test_a_server_that_mounts_by_itself_does_so_again(mount_with: str, route: str, program: str,
                                                       tmp_path: Path) -> None:
    if reason := fuse_available():
        pytest.skip(f"FUSE mounts unavailable: {reason}")
    if mount_with == "fusermount3" and shutil.which("fusermount3") is None:
        pytest.skip("not installed: fusermount3")
    pristine, src, mnt = tmp_path / "pristine", tmp_path / "src", tmp_path / "mnt"
    pristine.mkdir()
    (pristine / "a").write_bytes(b"alpha\n")
    shutil.copytree(pristine, src)
    mnt.mkdir()
    trace = tmp_path / "t.fzt"

    def server(source: Path, mountpoint: Path) -> list[str]:
        return [*PASSTHROUGHFS, "--mount-with", mount_with, str(source), str(mountpoint)]

    with recorded_server(server(src, mnt), mnt, trace, "-s", "0") as rec:
        assert (mnt / "a").read_bytes() == b"alpha\n"
        (mnt / "b").write_bytes(b"beta\n")
        assert rec.unmount_and_wait() == 0, rec.output()
    assert [e["route"] for e in _events(trace, "connected")] == [route]
    fresh = tmp_path / "fresh"
    shutil.copytree(pristine, fresh / "src")
    (fresh / "mnt").mkdir()
    written = tmp_path / "replayed.fzt"
    argv = server(fresh / "src", fresh / "mnt")
    report = replay(trace, argv, write=written)
    assert report.ok, report.text()
    assert report.server_exit == "exited with status 0"
    [started] = _events(written, "server_start")
    assert started["argv"] == argv  # as typed: no /dev/fd/N in place of the mountpoint
    [mounted] = _events(written, "server_mount")
    assert program in str(mounted["program"]) and mounted["target"] == str(fresh / "mnt")
    assert mounted["errno"] == 0
    assert not is_mounted(fresh / "mnt")
    assert "failed to unmount" not in report.server_log
