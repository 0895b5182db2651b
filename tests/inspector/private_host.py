"""A private mount namespace for the ordinary-user tests, so they never change the host.

`private_host()` moves the test process (its main thread, and so every process it starts)
into a new mount namespace with private propagation, and there:
- binds a device node of its own (`mknod c 10 229` on a tmpfs) over /dev/fuse, so a test
  may chmod "/dev/fuse" at will: the host's node keeps its mode;
- makes the given paths reachable for an ordinary user: each directory on the way that
  others cannot search (a 0700 home holding the interpreter, pytest's 0700 temporary
  root) is covered by a 0755 tmpfs holding only the child on the way, bound back;
- and on leaving, returns to the host's namespace (the private one ends with its last
  process, mounts included).
The test's files stay on the host's filesystems (so the test and its helpers see them
from both sides); only mounts and the device node are private.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
FUSE_MAJOR, FUSE_MINOR = 10, 229
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: Path | str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    """mount(2) itself: mount(8) would canonicalize a /proc/self/fd source away."""
    _check(_libc.mount(source.encode(), os.fsencode(target), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), data and data.encode()), f"mounting {target}")


def _tmpfs(target: Path) -> None:
    _mount("fusetrace-test", target, "tmpfs", 0, "mode=0755,size=64k")


def needed_paths() -> list[Path]:
    """What an ordinary user must reach to run this checkout's interpreter."""
    return [Path(os.path.realpath(sys.executable)), Path(os.path.realpath(sys.base_prefix)),
            Path(os.path.realpath(sys.prefix))]


def _blocked(paths: Iterable[Path]) -> dict[Path, set[str]]:
    """Directory others cannot search → its children on the way to `paths`."""
    out: dict[Path, set[str]] = {}
    for path in paths:
        for parent, child in zip(path.parents, [path, *path.parents][:-1]):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                out.setdefault(parent, set()).add(child.name)
    return out


def _reveal(blocked: dict[Path, set[str]]) -> None:
    for directory in sorted(blocked, key=lambda p: len(p.parts)):  # outermost first
        kept = {name: os.open(directory / name, os.O_PATH | os.O_CLOEXEC)
                for name in blocked[directory]}
        try:
            _tmpfs(directory)
            for name, fd in kept.items():
                target = directory / name
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    target.mkdir()
                else:
                    target.touch()
                _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        finally:
            for fd in kept.values():
                os.close(fd)


@contextlib.contextmanager
def private_host(scratch: Path, reachable: Iterable[Path] = (), fuse_mode: int = 0o600
                 ) -> Iterator[None]:
    """Run the body in a private mount namespace (see the module docstring); `scratch`
    is an empty directory of ours for the device node's tmpfs."""
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.getcwd()
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        try:
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            _tmpfs(scratch)
            node = scratch / "fuse"
            os.mknod(node, stat.S_IFCHR | fuse_mode, os.makedev(FUSE_MAJOR, FUSE_MINOR))
            os.chmod(node, fuse_mode)  # whatever the umask
            _mount(str(node), "/dev/fuse", None, MS_BIND)
            _reveal(_blocked([*needed_paths(), *reachable]))
            yield
        finally:
            _check(_libc.setns(host, CLONE_NEWNS), "setns(host mount namespace)")
            os.chdir(cwd)
    finally:
        os.close(host)


def give_to_nobody(*paths: Path) -> None:
    """The directories an ordinary user works in are that user's own, not 0777."""
    for path in paths:
        os.chown(path, NOBODY, NOBODY)
