"""The run directory on a shared machine: notes are kept only in a directory of the
user's own that nobody else can enter, and written and read without following links."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from inspector.record.cleanup import Note, RunDirError, notes, run_dir


def _note(device: str = "0:50") -> Note:
    return Note(os.getpid(), 1, "/mnt/a", device, "/t.fzt", ["srv"])


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setenv("FUSETRACE_RUNDIR", str(path))
    return path


def test_it_is_made_private_whatever_the_umask(rundir: Path) -> None:
    old = os.umask(0)
    try:
        _note().save()
    finally:
        os.umask(old)
    assert rundir.stat().st_mode & 0o777 == 0o700
    assert (rundir / "0-50.json").stat().st_mode & 0o777 == 0o600
    assert [n.device for n in notes()] == ["0:50"]


@pytest.mark.parametrize("how", ["open to all", "someone else's", "a symlink"])
def test_a_directory_others_could_use_is_refused(rundir: Path, tmp_path: Path, how: str) -> None:
    if how == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        rundir.symlink_to(tmp_path / "elsewhere")
    else:
        rundir.mkdir(mode=0o700)
        if how == "open to all":
            rundir.chmod(0o777)
        else:
            if os.geteuid() != 0:
                pytest.skip("needs root to give a directory away")
            os.chown(rundir, 65534, 65534)
    with pytest.raises(RunDirError, match="not a private directory"):
        _note().save()
    with pytest.raises(RunDirError):
        notes()
    if how == "a symlink":
        assert not list((tmp_path / "elsewhere").iterdir())


def test_planted_links_are_not_followed(rundir: Path, tmp_path: Path) -> None:
    rundir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    note = _note()
    (rundir / f".0-50.json.{os.getpid()}").symlink_to(victim)  # the temporary name
    note.save()
    assert victim.read_text() == "precious"
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps(asdict(_note("0:51"))))
    (rundir / "0-51.json").symlink_to(planted)  # a note that is a link is not read
    assert [n.device for n in notes()] == ["0:50"]


def test_without_a_runtime_directory_the_fallback_is_per_user(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.delenv("FUSETRACE_RUNDIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert run_dir() == tmp_path / "fusetrace"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert run_dir() == Path("/tmp/fusetrace-4242")  # checked when it exists, made 0700
