"""The two message pumps between /dev/fuse and the server's socket, recording every message.

- kernel → server (`_requests`): one read of /dev/fuse (the buffer fits the largest
  request a server may negotiate: a 4 MiB WRITE plus headers; smaller gives EINVAL),
  record, then one `send` on the SOCK_SEQPACKET socket: one request, one message.
- server → kernel (`_replies`): one `recv` (one message, whatever the server's threads
  do), record, then one `write` to /dev/fuse.

Each pump is a thread that runs the native loop (`_fastpath.c`) for ordinary messages,
with the GIL released, and comes back here for everything else: INIT both ways, a reply
in pieces, a message the kernel or the server refused, the end. The tables that loop
uses (where file data starts, which requests get no reply) come from `dissectors`.

Order and durability: every message is recorded *before* it is forwarded, and the writer
has it on disk when the call returns. So a `kill -9` of fusetrace loses nothing the kernel
or the server saw, and a request the kernel sends *because of* a reply (RELEASE after an
OPEN reply, NOTIFY_REPLY after a RETRIEVE notification) is always recorded after that
reply, without a lock held across any forwarding. The price of recording first: the
kernel's verdict on a reply is not known yet. When its write fails (EINVAL for a malformed
reply, ENOENT for a request that was interrupted or aborted, ENODEV after the unmount), a
`reply_rejected` event follows the reply record with its `unique` and `write_errno`.
(The bundled server's own `--trace` writes first and records after, with the errno in the
reply's meta; it can afford the lock that keeps that ordered, being the only writer.)

The INIT request is the one message that may be altered: `mask_init` clears the flags a
relay cannot carry (FUSE_OVER_IO_URING, whose requests bypass /dev/fuse), and the record
keeps what was forwarded as `raw`, what the kernel sent as `original`, and why as `reason`.

Spliced replies: libfuse 3 splices a reply onto its fd whenever the filesystem asked for
FUSE_CAP_SPLICE_WRITE (fuse-overlayfs does), whatever the kernel's INIT offers (masking
SPLICE_* there does not stop it), and a splice onto a SEQPACKET socket arrives as several
messages (up to 16 pipe buffers each). The seccomp trap catches those splices and sends
each reply whole (`trap.py`). Without the trap (no seccomp user notification),
`Reassembler` puts a reply whose header says it is longer than what arrived back together
from the messages that follow, and the record notes the pieces (`fragments`). That is
exact when one server thread splices at a time (another thread's whole reply between two
pieces is recognised by its header and passed on); two spliced replies cut into each other
cannot be told apart and end the session with an error.

Replies carry no opcode, so the pumps share a unique → opcode map (entered before the
request leaves, popped by its reply) for the snap length, which needs to know a READ reply
when it sees one, and for telling a reply's header from file data.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from dissectors.constants import (
    FUSE_INIT_EXT,
    FUSE_OVER_IO_URING,
    IN_HEADER_SIZE,
    INIT_FLAGS,
    NO_REPLY_OPCODES,
    OUT_HEADER_SIZE,
    Opcode,
)
from dissectors.quick import (
    DATA_NOTIFY,
    DATA_REPLIES,
    DATA_REQUESTS,
    peek_reply,
    peek_request,
    snap,
)
from traces import TraceWriter

log = logging.getLogger(__name__)

#: The largest message either way: max_write 4 MiB (max_pages 1024) plus headers, with room.
BUFFER_SIZE = (4 << 20) + (64 << 10)
SOCKET_BUFFER = 16 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class NotBuilt(RuntimeError):
    """The C part is missing: installed without a compiler, or a tree nobody installed."""


def native() -> ModuleType:
    """`_fastpath`, the relay's C loops and the trace appender they share."""
    try:
        from . import _fastpath
    except ImportError as exc:
        raise NotBuilt(f"recording needs the C part that `pip install -e .` builds with gcc "
                       f"and python3-dev (README, command 1): {exc}") from exc
    return _fastpath


def server_socketpair() -> tuple[socket.socket, socket.socket, bool]:
    """(ours, the server's end, capped): a SOCK_SEQPACKET pair whose 16 MiB buffers let a
    4 MiB message through, forced as root; an ordinary user gets what
    net.core.[rw]mem_max allows, and `capped` is True."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for sock in pair:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
        return pair[0], pair[1], False
    except PermissionError:
        for sock in pair:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        return pair[0], pair[1], True


#: INIT flags the relay cannot carry, and why (the reason recorded with the alteration).
UNRELAYABLE: dict[int, str] = {
    FUSE_OVER_IO_URING: "FUSE-over-io_uring bypasses the /dev/fuse reads and writes the "
                        "proxy relays",
}
_INIT_FLAGS = struct.Struct("<II")  # fuse_init_in.flags, .flags2
_FLAGS_AT = IN_HEADER_SIZE + 12  # after major, minor, max_readahead
_NO_REPLY = NO_REPLY_OPCODES | {Opcode.INTERRUPT}


def mask_init(raw: bytes | memoryview, mask: int) -> tuple[bytes, str] | None:
    """INIT request bytes with the `mask` flags the kernel offered cleared, and the reason;
    None when it offered none of them. flags2 (bits 32..63) counts only with INIT_EXT."""
    if len(raw) < _FLAGS_AT + 4:
        return None
    has_flags2 = len(raw) >= _FLAGS_AT + 8
    flags, flags2 = _INIT_FLAGS.unpack_from(raw, _FLAGS_AT) if has_flags2 else (
        struct.unpack_from("<I", raw, _FLAGS_AT)[0], 0)
    offered = flags | (flags2 << 32 if flags & FUSE_INIT_EXT else 0)
    dropped = offered & mask
    if not dropped:
        return None
    kept = offered & ~dropped
    out = bytearray(raw)
    struct.pack_into("<I", out, _FLAGS_AT, kept & 0xFFFFFFFF)
    if has_flags2 and flags & FUSE_INIT_EXT:
        struct.pack_into("<I", out, _FLAGS_AT + 4, kept >> 32)
    names = "|".join(name for bit, name in INIT_FLAGS.items() if dropped & bit)
    why = "; ".join(text for bits, text in UNRELAYABLE.items() if dropped & bits)
    return bytes(out), f"masked {names} in INIT: {why}"


_OUT = struct.Struct("<IiQ")  # fuse_out_header: len, error, unique
PIECE_WAIT_MS = 200  # the pieces of one splice arrive back to back; longer means no more come
_MAX_NOTIFY_CODE = 64  # notification codes are small (7.45 ends at 9); room to grow


class Interleaved(Exception):
    """Two spliced replies arrived cut into each other."""


class Reassembler:
    """Whole replies from the socket's messages (see the module docstring).

    `pending(unique)` says whether a request with that unique awaits a reply: with it a
    fragment of file data is told from the header of a new message, which a multi-threaded
    server may send while another thread's spliced reply is still arriving.
    """

    def __init__(self, pending: Callable[[int], bool]) -> None:
        self.pending = pending
        self.partial: bytearray | None = None
        self.want = 0
        self.sizes: list[int] = []

    def _header(self, raw: memoryview | bytes) -> tuple[int, int] | None:
        """(len, size received) of a plausible fuse_out_header starting `raw`, else None."""
        if len(raw) < OUT_HEADER_SIZE:
            return None
        length, error, unique = _OUT.unpack_from(raw)
        if not OUT_HEADER_SIZE <= length <= BUFFER_SIZE:
            return None
        if unique == 0:
            ok = 0 < error < _MAX_NOTIFY_CODE
        else:
            ok = -4096 < error <= 0 and (self.pending(unique) or
                                          bool(unique & 1) and self.pending(unique & ~1))
        return (length, len(raw)) if ok else None

    def feed(self, raw: memoryview) -> tuple[memoryview | bytearray, list[int] | None] | None:
        """The next whole message and, if it was put together, the sizes of its pieces;
        None while a reply is still incomplete."""
        header = self._header(raw)
        if self.partial is None:
            if header is not None and header[1] < header[0]:
                self.partial, self.want, self.sizes = bytearray(raw), header[0], [len(raw)]
                return None
            return raw, None
        if header is not None and header[0] == header[1]:
            return raw, None  # another thread's whole reply, between two pieces
        if header is not None and header[1] < header[0]:
            self.partial = None
            raise Interleaved("two spliced replies arrived cut into each other")
        self.partial += raw
        self.sizes.append(len(raw))
        if len(self.partial) < self.want:
            return None
        whole, self.partial = self.partial, None
        return whole, self.sizes

    def flush(self) -> tuple[bytearray, list[int]] | None:
        """Give up waiting: what arrived of an incomplete reply, as it is. A server that
        sends a header longer than its message gets that message forwarded (and refused
        by the kernel) as it would without the relay, once no more pieces come."""
        if self.partial is None:
            return None
        whole, self.partial = self.partial, None
        return whole, self.sizes


@dataclass
class Stats:
    """The relay's counters at one moment, for the progress line."""

    requests: int = 0
    replies: int = 0
    request_bytes: int = 0
    reply_bytes: int = 0

    @property
    def messages(self) -> int:
        return self.requests + self.replies

    @property
    def bytes(self) -> int:
        return self.request_bytes + self.reply_bytes


class Relay:
    """Pumps messages both ways until the kernel says ENODEV and the server's end closes.

    `unmounted` is set when /dev/fuse reads ENODEV (unmounted or aborted), `server_closed`
    when the socket reads end-of-file (the last holder of the server's end closed it);
    `changed` is called after either, from the pump's thread. The writer must append
    through `native().Appender`: the C loops write their records through it.
    """

    def __init__(self, devfd: int, sock: socket.socket, writer: TraceWriter, snaplen: int,
                 init_mask: int = FUSE_OVER_IO_URING,
                 changed: Callable[[], None] | None = None) -> None:
        self.devfd = devfd
        self.sock = sock
        self.writer = writer
        self.snaplen = snaplen
        self.init_mask = init_mask
        self.changed = changed or (lambda: None)
        self.unmounted = threading.Event()
        self.server_closed = threading.Event()
        self.init_answered = threading.Event()
        self._trace_error: str | None = None
        self.broken: str | None = None  # why relaying had to stop
        fast = native()
        if not isinstance(writer.appender, fast.Appender):
            raise TypeError("the relay's TraceWriter must append through native().Appender")
        self._pump = fast.Pump(devfd=devfd, sockfd=sock.fileno(), appender=writer.appender,
                          snaplen=snaplen, bufsize=BUFFER_SIZE, data_request=DATA_REQUESTS,
                          data_reply=DATA_REPLIES, data_notify=DATA_NOTIFY, no_reply=_NO_REPLY,
                          to_python={Opcode.INIT})
        self._threads = [threading.Thread(target=self._run, args=(pump,), name=name, daemon=True)
                         for pump, name in ((self._requests, "relay-requests"),
                                            (self._replies, "relay-replies"))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for both pumps (if started); True when both ended."""
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    @property
    def stats(self) -> Stats:
        pump = self._pump
        return Stats(pump.requests_relayed, pump.replies_relayed, pump.request_bytes,
                     pump.reply_bytes)

    @property
    def trace_error(self) -> str | None:
        """Why the trace stopped growing, if it did (relaying goes on regardless)."""
        if self._trace_error is None and self._pump.trace_errno:
            self._trace_error = f"writing the trace failed: {os.strerror(self._pump.trace_errno)}"
        return self._trace_error

    @property
    def requests_running(self) -> bool:
        return self._threads[0].is_alive()

    def _run(self, pump: Callable[[], None]) -> None:
        try:
            pump()
        except Exception as exc:  # a bug here must still end the session, not hang it
            name = threading.current_thread().name
            log.exception("%s failed", name)
            self.broken = f"{name} failed: {exc!r}"
            self._record(self.writer.event, "proxy_error", reason=self.broken)
        finally:
            if pump == self._requests:
                self.unmounted.set()
            else:
                self.server_closed.set()
            self.changed()

    def _record(self, method: Callable[..., None], *args: Any, **meta: Any) -> None:
        """Record, or if the trace cannot be written (disk full …) note it once and go on
        relaying: the user's mount keeps working, and the session ends with the error."""
        if self.trace_error is not None:
            return
        try:
            method(*args, **meta)
        except (OSError, ValueError) as exc:
            self._pump.stop_recording()
            self._trace_error = f"writing the trace failed: {exc}"
            log.error("%s; relaying on without recording", self._trace_error)

    # --- kernel → server ----------------------------------------------------------------

    def _requests(self) -> None:
        while True:
            what, *rest = self._pump.requests()
            if what == "message":
                self._request(rest[0])
            elif what == "unsent":
                unique, opcode, err = rest
                self._record(self.writer.event, "request_not_forwarded", unique=unique,
                             opcode=opcode, errno=err)
            else:
                err = rest[0]
                if err and err != errno.ENODEV:
                    self._record(self.writer.event, "proxy_error",
                                 reason=f"reading /dev/fuse: {os.strerror(err)}")
                return

    def _request(self, raw: bytes) -> None:
        """A request the native loop leaves to us: INIT (maybe altered), or one too odd for
        its tables. Recorded, then forwarded, as there."""
        opcode, unique, _ = peek_request(raw)
        meta: dict[str, Any] = {}
        if opcode == Opcode.INIT:
            altered = mask_init(raw, self.init_mask)
            if altered is not None:
                meta = {"original": raw, "reason": altered[1]}
                raw = altered[0]
        if opcode not in _NO_REPLY:
            self._pump.pending_put(unique, opcode)
        kept, true_len = snap(raw, True, None, self.snaplen)
        if true_len is not None:
            meta["len"] = true_len
        self._record(self.writer.request, kept, **meta)
        try:
            self.sock.send(raw)
        except OSError as exc:
            self._pump.pending_pop(unique)
            self._record(self.writer.event, "request_not_forwarded", unique=unique,
                         opcode=opcode, errno=exc.errno)
            return
        self._pump.count(True, len(raw))

    # --- server → kernel ----------------------------------------------------------------

    def _replies(self) -> None:
        reassembler = Reassembler(lambda unique: self._pump.pending_get(unique) is not None)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        buf: bytearray | None = None  # for the pieces of a spliced reply, read here
        while True:
            if reassembler.partial is None:
                what, *rest = self._pump.replies()
                if what == "message":
                    message: memoryview | bytes = rest[0]
                elif what == "rejected":
                    unique, opcode, err = rest
                    self._rejected(unique, opcode, err)
                    continue
                elif what == "oversize":
                    self._oversize(rest[0])
                    continue
                else:
                    if rest[0] and rest[0] not in (errno.ECONNRESET, errno.EBADF):
                        self._record(self.writer.event, "proxy_error",
                                     reason=f"reading the server's socket: {os.strerror(rest[0])}")
                    return
            else:
                if not poller.poll(PIECE_WAIT_MS):
                    stale = reassembler.flush()
                    if stale is not None:
                        self._forward(stale)
                    continue
                buf = buf or bytearray(BUFFER_SIZE)
                try:
                    n = self.sock.recv_into(buf, 0, socket.MSG_TRUNC)
                except OSError as exc:
                    if exc.errno not in (errno.ECONNRESET, errno.EBADF):
                        self._record(self.writer.event, "proxy_error",
                                     reason=f"reading the server's socket: {exc.strerror}")
                    return
                if n == 0:  # every holder of the server's end closed it
                    stale = reassembler.flush()
                    if stale is not None:
                        self._forward(stale)
                    return
                if n > len(buf):
                    self._oversize(n)
                    continue
                message = memoryview(buf)[:n]
            try:
                whole = reassembler.feed(memoryview(message))
            except Interleaved as exc:
                self.broken = (f"{exc}: the server splices replies from several threads at "
                               f"once, which this relay cannot take apart")
                self._record(self.writer.event, "proxy_error", reason=self.broken)
                return
            if whole is not None:
                self._forward(whole)

    def _oversize(self, n: int) -> None:
        self._record(self.writer.event, "proxy_error",
                     reason=f"a {n}-byte message from the server exceeds the relay's "
                            f"{BUFFER_SIZE}-byte buffer; dropped")

    def _rejected(self, unique: int, opcode: int | None, err: int) -> None:
        self._record(self.writer.event, "reply_rejected", unique=unique, opcode=opcode,
                     write_errno=err)

    def _forward(self, whole: tuple[memoryview | bytearray, list[int] | None]) -> None:
        """Record one reply or notification, then write it to /dev/fuse."""
        raw, pieces = whole
        _error, unique = peek_reply(raw)
        opcode = self._pump.pending_pop(unique) if unique else None
        kept, true_len = snap(raw, False, opcode, self.snaplen)
        meta: dict[str, Any] = {}
        if true_len is not None:
            meta["len"] = true_len
        if pieces is not None:
            meta["fragments"] = pieces
        self._record(self.writer.reply, kept, **meta)
        self._pump.count(False, len(raw))
        try:
            os.write(self.devfd, raw)
        except OSError as exc:
            self._rejected(unique, opcode, exc.errno or errno.EIO)
        if opcode == Opcode.INIT:
            self.init_answered.set()
            self.changed()
