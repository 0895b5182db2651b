"""Reading a FUSE server's command line: where its mountpoint is, and which of its `-o`
options are the kernel's.

The mountpoint heuristic (libfuse conventions): libfuse's `fuse_parse_cmdline` takes the
mountpoint from the arguments the server itself left unparsed, which in practice makes it
the *last non-option argument* (`squashfuse IMAGE MNT`, `fuse-overlayfs -o ... MNT`,
`bindfs SRC MNT`, pyfuse3's `SRC MNT`). Options are words starting with `-`; the word
after `-o` is its value; everything after `--` is positional. A server's own options that
take a separate value (`--cache DIR`, `-m module`) look like positional arguments too, so
only arguments naming an existing directory (or a mount point: a dead FUSE mount there
fails stat(), and is then reported as in use) count, and the last of them wins. When that
guesses wrong, `--mountpoint PATH` names the argument to replace.

Mount options: every `-o a,b=c` item (also `-oa,b`) is read; those the kernel or mount(2)
takes are applied to fusetrace's own mount (see `KERNEL_FLAGS`, `MOUNT_FLAGS` and the
`fsname=`, `subtype=`, `max_read=` values); all others are the server's business and are
left alone. As libfuse does, a mount with neither `fsname=` nor `subtype=` gets the
subtype of the program's base name (type `fuse.NAME`); the source is `fsname=`, or else
the subtype. Options a server adds to its own argument list
internally (fuse-overlayfs adds `default_permissions,allow_other`) are invisible here:
pass them to `fusetrace record -o`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

from .. import syscalls
from ..mounts import MountOptions, canonical, mount_entries

#: Options that only set or clear mount(2) flags: name → (set, clear).
MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (syscalls.MS_RDONLY, 0), "rw": (0, syscalls.MS_RDONLY),
    "nosuid": (syscalls.MS_NOSUID, 0), "suid": (0, syscalls.MS_NOSUID),
    "nodev": (syscalls.MS_NODEV, 0), "dev": (0, syscalls.MS_NODEV),
    "noexec": (syscalls.MS_NOEXEC, 0), "exec": (0, syscalls.MS_NOEXEC),
    "sync": (syscalls.MS_SYNCHRONOUS, 0), "async": (0, syscalls.MS_SYNCHRONOUS),
    "dirsync": (syscalls.MS_DIRSYNC, 0),
    "noatime": (syscalls.MS_NOATIME, 0), "atime": (0, syscalls.MS_NOATIME),
    "nodiratime": (syscalls.MS_NODIRATIME, 0), "diratime": (0, syscalls.MS_NODIRATIME),
    "relatime": (syscalls.MS_RELATIME, 0), "norelatime": (0, syscalls.MS_RELATIME),
    "strictatime": (syscalls.MS_STRICTATIME, 0), "nostrictatime": (0, syscalls.MS_STRICTATIME),
    "lazytime": (syscalls.MS_LAZYTIME, 0), "nolazytime": (0, syscalls.MS_LAZYTIME),
}
#: Options the FUSE kernel module reads from the mount data.
KERNEL_FLAGS = ("allow_other", "default_permissions")
KERNEL_VALUES = ("fsname", "subtype", "max_read")
#: Options fusetrace cannot honour.
UNSUPPORTED = {"blkdev": "fuseblk (block device) mounts are not supported"}


class ArgumentError(ValueError):
    """A command line fusetrace cannot work with; the message is one line for the user."""


def _walk(argv: list[str]) -> list[tuple[int, str]]:
    """(index, argument) of the non-option arguments after argv[0]."""
    positional: list[tuple[int, str]] = []
    i, dashdash = 1, False
    while i < len(argv):
        arg = argv[i]
        if dashdash or arg == "-" or not arg.startswith("-"):
            positional.append((i, arg))
        elif arg == "--":
            dashdash = True
        elif arg == "-o":
            i += 1  # its value
        i += 1
    return positional


def find_mountpoint(argv: list[str], explicit: str | None = None) -> int:
    """Index in `argv` of the server's mountpoint argument (see the module docstring)."""
    if explicit is not None:
        want = os.path.abspath(explicit)
        for i, arg in _walk(argv):
            if arg == explicit or os.path.abspath(arg) == want:
                return i
        raise ArgumentError(f"--mountpoint {explicit}: not among the server's arguments")
    mounted = {e.mountpoint for e in mount_entries()}
    dirs = [i for i, arg in _walk(argv) if canonical(arg) in mounted or os.path.isdir(arg)]
    if not dirs:
        raise ArgumentError("no mountpoint among the server's arguments (the last argument "
                            "naming an existing directory); name it with --mountpoint PATH")
    return dirs[-1]


def option_items(argv: list[str]) -> list[str]:
    """The items of every `-o a,b` / `-oa,b` before `--`, in order."""
    items: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        value = None
        if arg == "-o" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        elif arg.startswith("-o") and len(arg) > 2:
            value = arg[2:]
        if value is not None:
            items += [item for item in value.split(",") if item]
        i += 1
    return items


@dataclass
class MountPlan:
    """What fusetrace mounts: options, source and type, and what it took them from."""

    options: MountOptions
    applied: list[str] = field(default_factory=list)  # the items that became mount options

    @property
    def source(self) -> str:
        return self.options.fsname or self.options.subtype or "/dev/fuse"


def mount_plan(items: list[str], program: str) -> MountPlan:
    """Mount options from `-o` items (later items win, as in libfuse)."""
    opts = MountOptions()
    applied: list[str] = []
    for item in items:
        name, sep, value = item.partition("=")
        if name in UNSUPPORTED:
            raise ArgumentError(f"-o {item}: {UNSUPPORTED[name]}")
        if name in MOUNT_FLAGS and not sep:
            set_, clear = MOUNT_FLAGS[name]
            opts.flags = (opts.flags | set_) & ~clear
        elif name in KERNEL_FLAGS and not sep:
            setattr(opts, name, True)
        elif name in KERNEL_VALUES and sep:
            if name == "max_read":
                if not value.isdigit():
                    raise ArgumentError(f"-o {item}: max_read wants a number of bytes")
                opts.max_read = int(value)
            elif not value or "," in value:
                raise ArgumentError(f"-o {item}: empty {name}")
            else:
                setattr(opts, name, value)
        else:
            continue  # the server's own option
        applied.append(item)
    if opts.fsname is None and opts.subtype is None:
        opts.subtype = os.path.basename(program.rstrip("/")) or None
    return MountPlan(opts, applied)


@dataclass
class ServerCommand:
    """The server's command line and where its mountpoint sits in it (None when it could
    not be told and the server mounts by itself: then only the server knows)."""

    argv: list[str]
    mount_index: int | None

    @classmethod
    def parse(cls, argv: list[str], explicit: str | None = None,
              required: bool = True) -> ServerCommand:
        if not argv:
            raise ArgumentError("no server command given: fusetrace record [OPTIONS] -- "
                                "SERVER [ARGS...] MOUNTPOINT")
        try:
            return cls(list(argv), find_mountpoint(argv, explicit))
        except ArgumentError:
            if required or explicit is not None:
                raise
            return cls(list(argv), None)

    @property
    def mountpoint(self) -> str | None:
        return None if self.mount_index is None else self.argv[self.mount_index]

    def with_mountpoint(self, replacement: str) -> list[str]:
        assert self.mount_index is not None
        argv = list(self.argv)
        argv[self.mount_index] = replacement
        return argv

    def mount_plan(self, extra: Sequence[str] = ()) -> MountPlan:
        """The server's `-o` items, then fusetrace's own (`extra`, `-o` values) on top."""
        ours = [item for value in extra for item in value.split(",") if item]
        return mount_plan(option_items(self.argv) + ours, self.argv[0])


def server_after_dashes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """SERVER [ARGS...] from after `--`: argparse's REMAINDER (`args.server`) takes all that
    follows TRACE, so options typed between TRACE and `--` are parsed here, as options
    (replay, reduce, fuzz)."""
    server = list(args.server)
    if "--" in server:
        at = server.index("--")
        parser.parse_args([*server[:at], args.trace], namespace=args)
        server = server[at + 1:]
    return server
