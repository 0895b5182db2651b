"""One `fusetrace serve` session: load the trace, mount, answer requests, unmount once.

The mount uses the recorded mount options (`allow_other`, `default_permissions`,
`max_read`, `ro` and the other flags: they change which requests the kernel sends) with
source and type `fusetrace` / `fuse.fusetrace`. The trace is untrusted: of its recorded
mount flags only the per-mount ones `-o` can name pass (no MS_BIND, MS_REMOUNT, MS_MOVE or
propagation), and the mount is always nosuid and nodev, whatever the trace says: a
crafted trace must not hand a local user a set-uid file or a device node. As root it is mount(2) on /dev/fuse, as
an ordinary user fusermount3, like `fusetrace record`.

One thread reads /dev/fuse and answers every request at once (nothing ever waits), with
a poll timeout so signals are seen. The session ends when:
- the mount is unmounted (`umount`, `fusermount3 -u`): /dev/fuse reads ENODEV;
- SIGINT/SIGTERM/SIGHUP: unmount (lazily when busy) in a helper thread while requests are
  still answered (an unmount may need some: writeback), abort the connection if that
  takes more than a few seconds or on a second signal;
- the kernel sends DESTROY.
Closing /dev/fuse at the end aborts whatever is left of the connection, so nothing on the
machine stays blocked on a served mount.
"""

from __future__ import annotations

import errno
import functools
import json
import operator
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from traces import TraceReadError

from ..mounts import (
    BackgroundUnmount,
    MountOptions,
    abort_connection,
    canonical,
    fuse_device,
    mount_fuse,
    mounts_at,
)
from .. import syscalls
from ..exchange.args import MOUNT_FLAGS, ArgumentError, mount_plan
from .book import BadTrace, ReplyBook
from .report import ServeReport
from .responder import Responder

FSNAME = "fusetrace"
_UNMOUNT_WAIT = 3.0
_POLL_MS = 200
_RETRY = {errno.EINTR, errno.EAGAIN, errno.ENOENT}
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


#: the mount(2) flags a served mount may take from a trace: those `-o` options name
SERVABLE_FLAGS = functools.reduce(operator.or_, (on for on, _ in MOUNT_FLAGS.values()))
_MS_MGC_VAL, _MS_MGC_MSK = 0xC0ED0000, 0xFFFF0000  # mount(2)'s pre-2.4 magic in the top half


class ServeError(Exception):
    """A problem that stops serving before it starts; one line for the user."""


@dataclass
class ServeConfig:
    trace: str
    mountpoint: str
    miss_errno: int = errno.EIO
    report_json: str | None = None
    quiet: bool = False


def mount_options(header: dict[str, Any], mount: dict[str, Any] | None = None) -> MountOptions:
    """The recorded mount's options, with our own source and type. The `mount` event
    (the mount as made, also when the server mounted by itself) wins over the header's
    (what fusetrace meant to mount, from the server's -o)."""
    items = _mount_data_items(mount) if mount is not None else None
    flags_from = mount if items is not None else header.get("mount")
    if items is None:
        items = header.get("options")
        items = [i for i in items if isinstance(i, str)] if isinstance(items, list) else []
    items = [i for i in items if not i.startswith(("fsname=", "subtype="))]
    try:
        opts = mount_plan(items, FSNAME).options
    except ArgumentError as exc:
        raise ServeError(f"recorded mount options: {exc}") from None
    flags = flags_from.get("flags") if isinstance(flags_from, dict) else None
    if type(flags) is int:
        if flags & _MS_MGC_MSK == _MS_MGC_VAL:  # the old magic: the kernel drops it too
            flags &= ~_MS_MGC_MSK
        opts.flags = flags & SERVABLE_FLAGS
    opts.flags |= syscalls.MS_NOSUID | syscalls.MS_NODEV
    opts.fsname, opts.subtype = FSNAME, FSNAME
    return opts


def _mount_data_items(mount: dict[str, Any]) -> list[str] | None:
    """The -o items of a recorded mount(2)'s data string; None when the event holds none
    (a mount through fusermount3 records its command line instead)."""
    data = mount.get("data")
    if not isinstance(data, str) or data.startswith("via "):
        return None
    return [item for item in data.split(",") if item]


class ServeSession:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.fd = -1
        self.device: str | None = None
        self.target = ""
        self.signals: list[int] = []
        self.unmounter: BackgroundUnmount | None = None
        self.book: ReplyBook | None = None
        self.responder: Responder | None = None

    # --- set-up -----------------------------------------------------------------------

    def _load(self) -> ReplyBook:
        try:
            return ReplyBook.load(self.cfg.trace)
        except BadTrace as exc:
            raise ServeError(str(exc)) from None

    def _check_mountpoint(self) -> None:
        self.target = canonical(self.cfg.mountpoint)
        there = mounts_at(self.target)  # before stat(): a dead FUSE mount would hang it
        if there:
            raise ServeError(f"mountpoint {self.target} is in use: {there[-1].fstype} is "
                             "mounted there")
        if not os.path.lexists(self.target):
            raise ServeError(f"mountpoint {self.cfg.mountpoint} does not exist (mkdir it first)")
        if not os.path.isdir(self.target):
            raise ServeError(f"mountpoint {self.cfg.mountpoint}: not a directory")

    def _mount(self, opts: MountOptions) -> None:
        self.fd, _ = mount_fuse(FSNAME, self.target, opts)
        self.device = fuse_device(self.target, opts.fstype)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self.book = self._load()
        self._check_mountpoint()
        opts = mount_options(self.book.header, self.book.mount)
        self.responder = Responder(self.book, self.cfg.miss_errno)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        reason = "not started"
        try:
            self._mount(opts)
            if not self.cfg.quiet:
                print(f"fusetrace: serving {self.cfg.trace} on {self.target} "
                      f"({len(self.book.exchanges)} recorded replies); unmount it or press "
                      "Ctrl-C to stop", file=sys.stderr)
            reason = self._serve(buffer_size(self.responder.max_write))
        finally:
            self._finish()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        report = self.responder.finish(reason)
        self._report(report)
        return 0 if report.ok else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _serve(self, bufsize: int) -> str:
        assert self.responder is not None
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            stop = self._stop_reason()
            if stop:
                return stop
            if not poller.poll(_POLL_MS):
                continue
            try:
                raw = os.read(self.fd, bufsize)
            except OSError as exc:
                if exc.errno in _RETRY:
                    continue
                if exc.errno == errno.ENODEV:
                    return self._signalled("unmounted")
                raise
            reply = self.responder.respond(raw)
            if reply is not None:
                try:
                    os.write(self.fd, reply)
                except OSError as exc:  # ENOENT: the request was interrupted meanwhile
                    if exc.errno == errno.ENODEV:
                        return self._signalled("unmounted")
                    if exc.errno != errno.ENOENT:
                        raise
            if self.responder.destroyed:
                return "DESTROY"

    def _stop_reason(self) -> str | None:
        """Start unmounting on the first signal; stop once that is done, overdue or a
        second signal came."""
        if not self.signals or self.device is None:
            return None
        if self.unmounter is None:
            self.unmounter = BackgroundUnmount(self.target, self.device, _UNMOUNT_WAIT)
        if self.unmounter.done:
            return self._signalled(self.unmounter.outcome or "unmounted")
        if self.unmounter.overdue or len(self.signals) >= 2:
            abort_connection(self.device)
            return self._signalled("connection aborted")
        return None

    def _signalled(self, what: str) -> str:
        if not self.signals:
            return what
        return f"{what} after {signal.Signals(self.signals[0]).name}"

    # --- the end ----------------------------------------------------------------------

    def _finish(self) -> None:
        """Unmount if still mounted (once), then close /dev/fuse: that aborts the rest."""
        if self.device is not None and mounts_at(self.target):
            unmounter = self.unmounter or BackgroundUnmount(self.target, self.device,
                                                            _UNMOUNT_WAIT)
            unmounter.join(max(unmounter.deadline - time.monotonic(), 0.1))
            if not unmounter.done:
                abort_connection(self.device)
                unmounter.join(5.0)
            if unmounter.error is not None:
                print(f"fusetrace: unmounting {self.target}: {unmounter.error}", file=sys.stderr)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _report(self, report: ServeReport) -> None:
        if self.cfg.report_json:
            with open(self.cfg.report_json, "w", encoding="utf-8") as f:
                json.dump(report.to_json(), f, indent=1)
                f.write("\n")
        if not self.cfg.quiet or not report.ok:
            print(report.text(), file=sys.stderr)


def buffer_size(max_write: int) -> int:
    """A WRITE of max_write bytes plus headers (the kernel refuses smaller buffers);
    `max_write` is the clamped one the INIT reply granted, never the trace's own."""
    return max(max_write, 4096) + 8192


def serve(cfg: ServeConfig) -> int:
    """Serve until unmounted or signalled. 0: every request answered from the trace;
    1: some were not (see the report); 2: could not serve (one line on stderr)."""
    try:
        return ServeSession(cfg).run()
    except (ServeError, TraceReadError, OSError) as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
