"""The new mount API under the trap: a server's fsopen("fuse"), fsconfig, fsmount and
move_mount of the relay, made for real on the recorder's /dev/fuse.

libfuse 3.17+ mounts with fsopen/fsconfig/fsmount/move_mount first and falls back to
mount(2) when that fails. Under the trap its `fd=N` names the relay socket, which the
kernel refuses at CMD_CREATE (EINVAL: not a /dev/fuse file), so the server would print
the failure and mount the old way. What the kernel does (measured on 6.18) decides how
the recorder steps in:

- `fd` is resolved at CMD_CREATE, in the descriptor table of whoever makes that call (a
  number pointed at another file between SET_STRING and CMD_CREATE gives EINVAL), and
  fsconfig SET_FD is refused for it. So the server's `fd=` naming the relay is only
  noted, and CMD_CREATE is the recorder's: it sets `fd` to its own /dev/fuse and creates.
- The fs_context belongs to the file: fsconfig on another process's descriptor of it (a
  pidfd_getfd copy, or the recorder's own handed over) works, and the server's later
  fsmount and move_mount of it work too.
- CMD_CREATE, fsmount and move_mount each check the calling thread's CAP_SYS_ADMIN (EPERM
  without it), and fsopen checks it too: each is made with the caller's credentials
  (`creds`), as the trap does for mount(2).

So: fsopen of "fuse"/"fuseblk" is made by the recorder and the context handed over
(SECCOMP_ADDFD_FLAG_SEND), the recorder keeping the same file; fsconfig parameters on it
are set by the recorder (the kernel's answer is the server's); CMD_CREATE as above, after
which the session starts relaying. fsmount runs in the server, as it is: the mount it
returns is an O_PATH file, which SECCOMP_ADDFD refuses to hand over (EBADF). The server's
move_mount of it is made by the recorder through the server's /proc/PID/fd links (a path
walk through them reaches the same mount), with the caller's credentials, after which the
session records the mount as mount(2) would have shown it: the mount carrying the
connection is found by the `fuse_connection` that /dev/fuse's fdinfo names. Every such
call is recorded as a `server_mount_api` event (call, arguments, errno when the recorder
made it). Calls on other contexts (another filesystem, or a FUSE context with a /dev/fuse
of the server's own) run untouched.

Caveats: the context is created in the recorder's user and mount namespaces (a server in
namespaces of its own is not followed, as for mount(2)); only a whole-mount move_mount
(empty source path) of the created mount is taken over.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import syscalls
from ..mounts import canonical, mount_entries, mounts_at
from . import creds
from .trap import Notification, exe_of, fd_path, read_string, tgid_of

if TYPE_CHECKING:
    from .trap import IoctlTrap

FUSE_TYPES = ("fuse", "fuseblk")
_NR_KCMP = {"x86_64": 312, "aarch64": 272}
_KCMP_FILE = 0
_EMPTY_PATHS = syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH
_CREATES = (syscalls.Fsconfig.CMD_CREATE, syscalls.Fsconfig.CMD_CREATE_EXCL)
_SETS = (syscalls.Fsconfig.SET_FLAG, syscalls.Fsconfig.SET_STRING)
_libc = ctypes.CDLL(None, use_errno=True)
Answer = tuple[int, int, "bool | None"]  # (value, errno, continue); None: answered by ADDFD


@dataclass(frozen=True)
class FsCreate:
    """The server's CMD_CREATE of a FUSE context whose `fd=` named the relay: the
    recorder's to make on `context` (its own descriptor of it) with `fd=` set to its
    /dev/fuse, with the credentials of thread `tid`."""

    context: int
    command: int  # Fsconfig.CMD_CREATE or CMD_CREATE_EXCL
    pid: int
    tid: int
    program: str


@dataclass(frozen=True)
class FsAttached:
    """That connection's mount, attached where the server asked: what its mount(2) would
    have been (`flags` as mount(2) flags, `data` its options without `fd=`)."""

    source: str
    target: str
    fstype: str
    flags: int
    data: str
    device: str  # major:minor


@dataclass(frozen=True)
class MountApiHandler:
    """The session's part: `create` makes the CMD_CREATE (0 or an errno), `attached`
    records the mount."""

    create: Callable[[FsCreate], int]
    attached: Callable[[FsAttached], None]


@dataclass
class _Context:
    """A FUSE fs context the recorder opened for a server."""

    copy: int  # the recorder's descriptor of it (the same file as the server's)
    fstype: str
    params: list[tuple[str, str | None]] = field(default_factory=list)  # as set; None: a flag
    relay: bool = False  # its fd= named the relay
    created: bool = False
    attrs: int = 0  # its fsmount's mount attributes


class MountApi:
    """The trap's handler for fsopen/fsconfig/fsmount/move_mount (see the module)."""

    def __init__(self, trap: IoctlTrap, handler: MountApiHandler) -> None:
        self.trap = trap
        self.handler = handler
        self._contexts: list[_Context] = []
        self._problem: str | None = None  # the recorder's own failure in the current call
        arch = trap.arch
        self.calls: dict[int, Callable[[Notification], Answer]] = {
            arch.fsopen: self._fsopen, arch.fsconfig: self._fsconfig,
            arch.fsmount: self._fsmount, arch.move_mount: self._move_mount}

    def handle(self, note: Notification) -> Answer:
        return self.calls[note.nr](note)

    def close(self) -> None:
        for ctx in self._contexts:
            os.close(ctx.copy)
        self._contexts.clear()

    # --- the calls ------------------------------------------------------------------------

    def _fsopen(self, note: Notification) -> Answer:
        """A FUSE context is opened by the recorder and handed over."""
        fstype = read_string(note.tid, note.args[0])
        if fstype not in FUSE_TYPES or not self.trap.still_valid(note):
            return 0, 0, True
        flags = note.args[1] & 0xFFFFFFFF
        pid = tgid_of(note.tid)
        answer, ours = self._as_caller(
            note, lambda: syscalls.fsopen(fstype or "", flags | syscalls.FSOPEN_CLOEXEC))
        if ours is None:
            self._event("fsopen", note, pid, answer, fstype=fstype, flags=flags)
            return answer
        answer, fd = self._hand_over(note, ours, flags & syscalls.FSOPEN_CLOEXEC)
        self._event("fsopen", note, pid, answer, fstype=fstype, flags=flags, fd=fd)
        if fd is None:
            os.close(ours)
        else:
            self._contexts.append(_Context(ours, fstype or ""))
        return answer

    def _fsconfig(self, note: Notification) -> Answer:
        pid = tgid_of(note.tid)
        ctx = self._find(note.tid, note.fd)
        command = note.args[1] & 0xFFFFFFFF
        if ctx is None or command not in (*_SETS, *_CREATES):
            return 0, 0, True
        if command in _CREATES:
            return self._create(note, pid, ctx, command)
        key = read_string(note.tid, note.args[2])
        value = (read_string(note.tid, note.args[3])
                 if command == syscalls.Fsconfig.SET_STRING else None)
        if key is None:
            return 0, 0, True  # the kernel's EINVAL or EFAULT to give
        if key == "fd" and command == syscalls.Fsconfig.SET_STRING:
            ctx.relay = bool(value and value.isdigit()
                             and self.trap.is_relay(note.tid, int(value)))
            if not ctx.relay:
                return 0, 0, True  # a /dev/fuse of its own: the kernel resolves it in the server
            if not self.trap.still_valid(note):
                return 0, 0, True
            self._event("fsconfig", note, pid, (0, 0, False), command=syscalls.Fsconfig(command).name,
                        key=key, value=value, note="names the relay: the recorder's "
                                                   "/dev/fuse takes its place at CMD_CREATE")
            ctx.params.append((key, value))
            return 0, 0, False
        if not self.trap.still_valid(note):
            return 0, 0, True
        try:
            syscalls.fsconfig(ctx.copy, command, key, value)
            answer = (0, 0, False)
            ctx.params.append((key, value))
        except OSError as exc:
            answer = (-1, exc.errno or errno.EINVAL, False)
        self._event("fsconfig", note, pid, answer, command=syscalls.Fsconfig(command).name, key=key,
                    value=value)
        return answer

    def _create(self, note: Notification, pid: int, ctx: _Context, command: int) -> Answer:
        """CMD_CREATE of a context naming the relay: the session makes it."""
        if not ctx.relay or not self.trap.still_valid(note):
            return 0, 0, True
        err = self.handler.create(FsCreate(ctx.copy, command, pid, note.tid, exe_of(note.tid)))
        answer = (0 if err == 0 else -1), err, False
        if err == 0:
            ctx.created = True
            self.trap.release_relay()
        self._event("fsconfig", note, pid, answer, command=syscalls.Fsconfig(command).name)
        return answer

    def _fsmount(self, note: Notification) -> Answer:
        """fsmount of a context created here runs in the server (the mount it gets is an
        O_PATH file, which SECCOMP_ADDFD refuses); its attributes are noted."""
        pid = tgid_of(note.tid)
        ctx = self._find(note.tid, note.fd)
        if ctx is not None and ctx.created:
            ctx.attrs = note.args[2] & 0xFFFFFFFF
            self._event("fsmount", note, pid, (0, 0, True), flags=note.args[1] & 0xFFFFFFFF,
                        attr_flags=ctx.attrs, note="made by the server itself")
        return 0, 0, True

    def _move_mount(self, note: Notification) -> Answer:
        """The server's move_mount of a detached mount while a connection created here is
        not attached yet: made by the recorder through the server's own descriptors
        (/proc/PID/fd links), so that its result is known and the mount recorded."""
        ctx = next((c for c in self._contexts if c.created), None)
        flags = note.args[4] & 0xFFFFFFFF
        if ctx is None or not flags & syscalls.MOVE_MOUNT_F_EMPTY_PATH:
            return 0, 0, True
        pid = tgid_of(note.tid)
        from_fd = ctypes.c_int(note.args[0] & 0xFFFFFFFF).value
        to_fd = ctypes.c_int(note.args[2] & 0xFFFFFFFF).value
        to_path = read_string(note.tid, note.args[3]) or ""
        if (read_string(note.tid, note.args[1]) != "" or fd_path(note.tid, from_fd) != "/"
                or not self.trap.still_valid(note)):
            return 0, 0, True  # not the whole of a detached mount
        target, to_flags = _target(note.tid, to_fd, to_path, flags)
        answer, _ = self._as_caller(note, lambda: syscalls.move_mount(
            syscalls.AT_FDCWD, f"/proc/{note.tid}/fd/{from_fd}", syscalls.AT_FDCWD, target,
            flags & ~_EMPTY_PATHS | syscalls.MOVE_MOUNT_F_SYMLINKS | to_flags))
        self._event("move_mount", note, pid, answer, from_fd=from_fd, to_fd=to_fd,
                    to_path=to_path, flags=flags)
        if answer[1] == 0:
            self._attached(ctx, target)
        return answer

    # --- helpers --------------------------------------------------------------------------

    def _attached(self, ctx: _Context, target: str) -> None:
        """When the connection's mount is now in place, tell the session what mount(2)
        would have made (a mount moved that is not it is only recorded as a call)."""
        device = _connection_device(self.trap.device_fd)
        if device is None:  # a kernel whose fdinfo does not say: the FUSE mount moved there
            # (without a stat of the mount itself: its server may not be answering yet)
            place = os.readlink(target) if os.path.islink(target) else canonical(target)
            device = next((e.device for e in reversed(mounts_at(place)) if e.is_fuse), None)
        where = next((e.mountpoint for e in mount_entries() if e.device == device), None)
        if where is None:
            return
        os.close(ctx.copy)
        self._contexts.remove(ctx)
        given = dict(ctx.params)
        flags = 0
        for attr, flag in syscalls.MOUNT_ATTRS.items():
            if ctx.attrs & attr:
                flags |= flag
        data = []
        for key, value in ctx.params:
            if key in syscalls.SB_FLAG_OPTIONS and value is None:
                flags |= syscalls.SB_FLAG_OPTIONS[key]
            elif key not in ("source", "subtype", "fd"):
                data.append(key if value is None else f"{key}={value}")
        subtype = given.get("subtype")
        self.handler.attached(FsAttached(
            given.get("source") or ctx.fstype, where,
            f"{ctx.fstype}.{subtype}" if subtype else ctx.fstype, flags, ",".join(data),
            device))

    def _find(self, tid: int, fd: int) -> _Context | None:
        """The context that thread `tid`'s `fd` is (the same file as our descriptor of it).
        By thread: once a process's main thread has ended, its pid has no descriptors."""
        nr = _NR_KCMP.get(platform.machine())
        return next((ctx for ctx in self._contexts if nr is not None and _libc.syscall(
            nr, os.getpid(), tid, _KCMP_FILE, ctx.copy, fd) == 0), None)

    def _as_caller(self, note: Notification, call: Callable[[], Any]) -> tuple[Answer, Any]:
        """`call()` with the calling thread's credentials: (the server's answer, its
        result or None when it failed). A failure of the recorder's own (credentials it
        cannot take) is noted for the call's record."""
        self._problem = None
        try:
            caller = creds.of_thread(tgid_of(note.tid), note.tid)
            with creds.assumed(caller):
                try:
                    result = call()
                except OSError as exc:
                    return (-1, exc.errno or errno.EIO, False), None
        except OSError as exc:
            self._problem = f"taking on the caller's credentials: {exc.strerror}"
            return (-1, exc.errno or errno.EPERM, False), None
        return (0, 0, False), result

    def _hand_over(self, note: Notification, fd: int, cloexec: int) -> tuple[Answer, int | None]:
        """Give the server (the calling thread's process) our `fd` as the call's result."""
        try:
            newfd = self.trap.answer_with_fd(note, fd, bool(cloexec))
        except OSError as exc:
            self._problem = f"handing the descriptor over: {exc.strerror}"
            return (-1, exc.errno or errno.EIO, False), None
        return (newfd, 0, None), newfd

    def _event(self, call: str, notification: Notification, pid: int, answer: Answer,
               **args: Any) -> None:
        if self._problem is not None:
            args["recorder_error"], self._problem = self._problem, None
        if answer[2] is not True:  # else the kernel answers the server itself, unseen
            args["errno"] = answer[1]
        self.trap.note_event("server_mount_api", call=call, pid=pid, tid=notification.tid,
                             **args)


def _target(tid: int, to_fd: int, to_path: str, flags: int) -> tuple[str, int]:
    """move_mount's target as a path the recorder can use, and the flag that follows its
    last component when that is the server's descriptor itself."""
    if to_path.startswith("/"):
        return to_path, 0
    base = f"/proc/{tid}/cwd" if to_fd == syscalls.AT_FDCWD else f"/proc/{tid}/fd/{to_fd}"
    if not to_path and flags & syscalls.MOVE_MOUNT_T_EMPTY_PATH:
        return base, syscalls.MOVE_MOUNT_T_SYMLINKS
    return f"{base}/{to_path}", 0


def _connection_device(device_fd: int) -> str | None:
    """major:minor of the filesystem on /dev/fuse descriptor `device_fd` (its
    `fuse_connection` in fdinfo is the kernel's dev_t: major << 20 | minor)."""
    try:
        with open(f"/proc/self/fdinfo/{device_fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("fuse_connection:"):
                    dev = int(line.split()[1])
                    return f"{dev >> 20}:{dev & 0xFFFFF}"
    except (OSError, ValueError):
        pass
    return None
