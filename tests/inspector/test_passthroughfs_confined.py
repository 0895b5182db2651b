"""The bundled passthrough filesystem never reaches outside SOURCE, whatever a replayed or
fuzzed request names: the kernel sends single components, a harness may send '/dev/null',
'..' at the root, or a path through a symlink (a fuzz run chmod'ed the host's /dev/null)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dissectors.constants import FUSE_ROOT_ID
from inspector.passthroughfs.nodes import NodeTable


@pytest.fixture
def table(tmp_path: Path) -> tuple[NodeTable, Path]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "out").symlink_to(tmp_path)  # a symlink leading outside SOURCE
    return NodeTable(str(src)), src


@pytest.mark.parametrize("name, err", [(b"/dev/null", errno.EINVAL), (b"d/../..", errno.EINVAL),
                                       (b"", errno.EINVAL), (b"a\0b", errno.EINVAL)])
def test_names_that_are_not_one_component_are_refused(table: tuple[NodeTable, Path],
                                                      name: bytes, err: int) -> None:
    nodes, _ = table
    with pytest.raises(OSError) as raised:
        nodes.child(FUSE_ROOT_ID, name)
    assert raised.value.errno == err


def test_dot_and_dotdot_stay_inside(table: tuple[NodeTable, Path]) -> None:
    nodes, src = table
    assert nodes.child(FUSE_ROOT_ID, b"..") == str(src)
    assert nodes.child(FUSE_ROOT_ID, b".") == str(src)
    d = nodes.remember(str(src / "d"), os.lstat(src / "d"))
    assert nodes.child(d, b"..") == str(src)


def test_a_symlink_is_no_directory_to_look_in(table: tuple[NodeTable, Path]) -> None:
    nodes, src = table
    link = nodes.remember(str(src / "out"), os.lstat(src / "out"))
    with pytest.raises(OSError) as raised:
        nodes.child(link, b"src")
    assert raised.value.errno == errno.ENOTDIR
