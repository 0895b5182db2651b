"""The request loop: worker threads reading /dev/fuse, INIT negotiation, replies.

Like libfuse's multi-threaded loop, every worker does read → handle → write on the same
descriptor; the kernel hands each request to exactly one reader. Workers stop when the
read says ENODEV (unmounted), EOF (the recorder's socket closed) or after DESTROY; the
main thread waits for that or for SIGTERM/SIGINT, and the caller unmounts.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import threading
import time
from typing import Any

from scapy.packet import Packet

from dissectors.constants import (
    FUSE_INIT_EXT,
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_PASSTHROUGH,
    FUSE_WRITEBACK_CACHE,
    INIT_FLAGS,
    NotifyCode,
    Opcode,
)
from dissectors.context import DEFAULT_CONTEXT, FuseContext, dialect_of
from dissectors.ioctls import DevIoctl, FuseIoctlU32
from dissectors.offsets import OUT_HEADER_SIZE, put
from dissectors.opcodes import OPEN_REPLIES, RENAMES
from dissectors.quick import brief_reply, brief_request
from dissectors.structs import FuseInitOut, FuseName, FuseNotifyInvalEntryOut, FuseOutHeader
from dissectors.summary import line

from .misbehave import LONG_NAME, Misbehaviour
from .ops import NO_REPLY, Operations, Request
from .tracing import Tracer

log = logging.getLogger(__name__)

MAX_WRITE = 1 << 20
MAX_PAGES = 256
BUFFER_SIZE = MAX_WRITE + 8192  # a WRITE of max_write bytes plus its headers
_INIT_BITS = {name: bit for bit, name in INIT_FLAGS.items()}
#: INIT flags this server asks for whenever the kernel offers them.
WANTED_FLAGS = sum(_INIT_BITS[name] for name in (
    "ASYNC_READ", "BIG_WRITES", "MAX_PAGES", "INIT_EXT", "PARALLEL_DIROPS",
    "DO_READDIRPLUS", "READDIRPLUS_AUTO"))
NOTIFY_HEAD_START = 0.001  # seconds the notification gets to reach the kernel before the reply
#: read() errors that only mean "no request for you this time".
_RETRY = {errno.EINTR, errno.EAGAIN, errno.ENOENT}


class Server:
    """Serves one connection with `threads` workers until it ends or a signal arrives."""

    def __init__(self, fd: int, ops: Operations, tracer: Tracer, misbehave: Misbehaviour,
                 *, passthrough: bool = True, threads: int = 4, max_stack_depth: int = 1,
                 notify_renames: bool = False, clone_fd: bool = False) -> None:
        self.fd = fd
        self.notify_renames = notify_renames
        self.clone_fd = clone_fd
        self.ops = ops
        self.tracer = tracer
        self.misbehave = misbehave
        self.want_passthrough = passthrough
        self.threads = threads
        self.max_stack_depth = max_stack_depth
        self.ctx: FuseContext = DEFAULT_CONTEXT
        self.status = 0
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._signal: int | None = None
        self._workers: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Only note the signal: the handler runs between bytecodes of the main thread,
        which may hold locks, so the main loop acts on it."""
        def note(signum: int, frame: Any) -> None:
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, note)

    def serve(self) -> int:
        """Run the workers until the connection ends or a signal; returns the exit status."""
        self._workers = [threading.Thread(target=self._work, name=f"fuse-worker-{i}",
                                          daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        while not self._stopped.wait(0.2):
            if self._signal is not None:
                self.stop(f"signal {signal.Signals(self._signal).name}")
        log.info("stopping: %s (%d nodes known, %d handles open)", self.stop_reason,
                 len(self.ops.nodes), len(self.ops.handles))
        return self.status

    def join(self, timeout: float) -> None:
        """Give workers still finishing a request a moment, after the unmount."""
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0))

    def stop(self, reason: str, status: int = 0) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.status = reason, status
        self._stopped.set()

    # --- workers --------------------------------------------------------------------

    def _channel(self) -> int:
        """The descriptor this worker reads and answers on: with `clone_fd` a clone of the
        session's of its own (libfuse's clone_fd: the kernel takes a reply only on the
        descriptor that read its request), else the session's."""
        if not self.clone_fd:
            return self.fd
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, DevIoctl.CLONE, bytes(FuseIoctlU32(value=self.fd)))
        except OSError:
            os.close(fd)
            raise
        return fd

    def _work(self) -> None:
        """A worker; one that fails for any reason stops the server (a server left
        without workers would leave the kernel waiting for INIT forever)."""
        fd = self.fd
        try:
            fd = self._channel()
            self._work_on(fd)
        except BaseException as exc:
            log.exception("worker failed")
            self.stop(f"worker failed: {exc!r}", 1)
        finally:
            if fd != self.fd:
                os.close(fd)

    def _work_on(self, fd: int) -> None:
        while not self._stopped.is_set():
            try:
                raw = os.read(fd, BUFFER_SIZE)
            except OSError as exc:
                if exc.errno in _RETRY:
                    continue
                if exc.errno == errno.ENODEV:
                    self.stop("unmounted (ENODEV)")
                else:
                    log.error("reading requests: %s", exc)
                    self.stop(f"read error: {exc}", 1)
                return
            if not raw:
                self.stop("end of file on the connection")
                return
            try:
                self._serve_one(raw, fd)
            except Exception:  # a bug in a handler must not kill the worker
                log.exception("handling a request")

    def _serve_one(self, raw: bytes, fd: int) -> None:
        self.tracer.request(raw)
        req = Request(raw, brief_request(raw, self.ctx))
        log.debug("-> %s", line(req.brief))
        if self.misbehave.flags and self._seeded_bug(req):
            return
        reply = self._handle(req)
        if reply is None:
            return
        if log.isEnabledFor(logging.DEBUG):
            answered = self.ctx.for_reply(req.opcode, {"size": req.get("size")})
            log.debug("<- %s", line(brief_reply(reply, answered)))
        if (req.opcode == Opcode.STATFS and "short-statfs" in self.misbehave
                and len(reply) > OUT_HEADER_SIZE):
            short = bytearray(reply[:-4])
            put(FuseOutHeader, "len", short, len(short))
            reply = bytes(short)
        stall = self.misbehave.stall(req.opcode)
        if stall:
            time.sleep(stall)
        if self.notify_renames and req.opcode in RENAMES and len(reply) == OUT_HEADER_SIZE:
            self._invalidate_meanwhile(req.get("newdir"), req.name2)
        err = self.tracer.send(fd, reply, req.opcode)
        if err:
            log.log(logging.DEBUG if err == errno.ENOENT else logging.WARNING,
                    "reply to %s #%d: %s", _name(req.opcode), req.unique, os.strerror(err))
            self._unsent(req, reply)
        if req.opcode == Opcode.DESTROY:
            self.stop("DESTROY")

    def _invalidate_meanwhile(self, parent: int, name: bytes) -> None:
        """Tell the kernel to forget the entry a rename replaced, from a thread of its own
        and before the rename's reply, as rclone does. The kernel holds that write until
        the rename (which holds the directory) is answered, and this worker answers it
        meanwhile: a relay that writes one message at a time deadlocks here. The server's
        own --trace leaves these notifications out (its lock would queue the reply behind
        the held write)."""
        note = bytes(FuseOutHeader(error=NotifyCode.INVAL_ENTRY)
                     / FuseNotifyInvalEntryOut(parent=parent) / FuseName(name=name))
        started = threading.Event()

        def write() -> None:
            started.set()
            try:
                os.write(self.fd, note)
            except OSError as exc:  # ENOENT: the entry was not cached
                log.debug("INVAL_ENTRY %r: %s", name, exc)

        threading.Thread(target=write, name="inval-entry", daemon=True).start()
        started.wait()
        time.sleep(NOTIFY_HEAD_START)

    def _seeded_bug(self, req: Request) -> bool:
        """The seeded bugs taken before handling: crash, or drop the request (a hang)."""
        name = req.brief.extras.get("name")
        if "crash-long-name" in self.misbehave and isinstance(name, bytes) and len(name) > LONG_NAME:
            os.abort()
        return (req.opcode == Opcode.OPEN and "hang-append" in self.misbehave
                and bool((req.get("flags") or 0) & os.O_APPEND))

    def _handle(self, req: Request) -> bytes | None:
        """The reply bytes for a request, or None when none is due."""
        body: Any = None
        try:
            if req.opcode == Opcode.INIT:
                body = self._init(req)
            elif req.opcode == Opcode.DESTROY:
                body = None
            elif req.opcode not in self.ops.handlers:
                raise OSError(errno.ENOSYS, "not implemented")
            elif req.brief.reason:
                log.warning("malformed %s: %s", _name(req.opcode), req.brief.reason)
                raise OSError(errno.EIO, req.brief.reason)
            else:
                body = self.ops.handlers[req.opcode](req)
        except OSError as exc:
            return bytes(FuseOutHeader(unique=req.unique, error=-(exc.errno or errno.EIO)))
        except Exception:
            log.exception("%s #%d failed", _name(req.opcode), req.unique)
            return bytes(FuseOutHeader(unique=req.unique, error=-errno.EIO))
        if body is NO_REPLY:
            return None
        header = FuseOutHeader(unique=req.unique)
        if isinstance(body, Packet):
            header.add_payload(body)  # not `/`: that copies both packets, per reply
        return bytes(header)

    def _unsent(self, req: Request, reply: bytes) -> None:
        """An open whose reply the kernel refused (interrupted) will never be released."""
        fh = (brief_reply(reply, DEFAULT_CONTEXT.for_reply(req.opcode)).get("fh")
              if req.opcode in OPEN_REPLIES else None)
        if fh is not None:
            try:
                self.ops.close_handle(fh)
            except OSError:
                pass

    # --- INIT -------------------------------------------------------------------------

    def _init(self, req: Request) -> Packet:
        """Answer with our minor and what we want of what the kernel offered."""
        if req.get("major") != 7:
            raise OSError(errno.EPROTO, f"kernel speaks FUSE {req.get('major')}")
        offered = req.get("flags") or 0
        if offered & FUSE_INIT_EXT:
            offered |= (req.get("flags2") or 0) << 32
        wanted = WANTED_FLAGS
        if self.want_passthrough:
            wanted |= FUSE_PASSTHROUGH
        if "writeback-cache" in self.misbehave:
            wanted |= FUSE_WRITEBACK_CACHE
        flags = offered & wanted
        minor = min(FUSE_KERNEL_MINOR_VERSION, req.get("minor"))
        passthrough = bool(flags & FUSE_PASSTHROUGH)
        self.ops.passthrough = passthrough
        self.ops.writeback = bool(flags & FUSE_WRITEBACK_CACHE)
        self.ctx = FuseContext(minor=minor, flags=flags, dialect=dialect_of(minor, flags),
                               minor_known=True)
        log.info("INIT: kernel 7.%d offers %#x, we take %#x (passthrough %s)",
                 req.get("minor"), offered, flags, "on" if passthrough else "off")
        return FuseInitOut(
            major=7, minor=minor, max_readahead=req.get("max_readahead"),
            flags=flags & 0xFFFFFFFF, flags2=flags >> 32, max_write=MAX_WRITE, time_gran=1,
            max_pages=MAX_PAGES, max_stack_depth=self.max_stack_depth if passthrough else 0)


def _name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)
