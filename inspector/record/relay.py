"""The relay between /dev/fuse and the server's socket, recording every message.

- kernel → server: one read of /dev/fuse, record, then one `send` on the SOCK_SEQPACKET
  socket: one request, one message.

Sizes: the kernel refuses (EINVAL) a read of /dev/fuse smaller than a WRITE of the
negotiated max_write plus its headers, and a SEQPACKET message cannot be larger than
`features.seqpacket_limit` (4 MiB + 68 KiB on x86-64, whatever the buffers). So the INIT
reply is the one reply that may be altered: a server asking for more (max_write, or
max_pages within fs.fuse.max_pages_limit) than one message carries gets what fits, and
the record keeps what it sent as `original` and why as `reason` (`fit_init_reply`); the
buffers, `BUFFER_SIZE` (libfuse's 4 MiB) until then, are then sized from what the kernel
took (`buffer_size`).
- server → kernel: one `recv` (one message, whatever the server's threads do), record,
  then one `write` to /dev/fuse.

Lanes (`_fastpath.c`, C with the GIL released): one thread carries requests, several carry
replies, each taking one whole message from the socket; notifications are written by a pool
that grows whenever none of its threads is free, so a write the kernel holds on a lock
(INVAL_ENTRY waits for the directory a LOOKUP holds) never holds back the reply that frees
it. Whatever the server's threads do at once, the relay lets happen at once. The lanes
come back here for everything else: INIT both ways, a reply in pieces, a message the kernel
or the server refused, the end. The request lane polls both ends for `SPIN_US` after each
message before it sleeps, relaying the replies it finds itself (a fast server's reply, and
its client's next request, come sooner than a sleeping thread can be woken; one polling
thread, not one per lane), but only while no thread waits for a CPU (the kernel's CPU
pressure, PSI): on a busy machine polling would keep the server from running. A request the
server's full socket cannot take yet holds only the request lane. The lanes' tables (where
file data starts, which requests get no reply) come from `dissectors`.

Order and durability: every message is recorded *before* it is forwarded, and the writer
has it on disk when the call returns. So a `kill -9` of fusetrace loses nothing the kernel
or the server saw, and a request the kernel sends *because of* a reply (RELEASE after an
OPEN reply, NOTIFY_REPLY after a RETRIEVE notification) is always recorded after that
reply. The price of recording first: the
kernel's verdict on a reply is not known yet. When its write fails (EINVAL for a malformed
reply, ENOENT for a request that was interrupted or aborted, ENODEV after the unmount), a
`reply_rejected` event follows the reply record with its `unique`, `write_errno` and
`connection_gone` (the device polls POLLERR: the mount had ended, and its requests with it).
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

Replies carry no opcode, so the loop keeps a unique → opcode map (entered before the
request leaves, popped by its reply) for the snap length, which needs to know a READ reply
when it sees one, and for telling a reply's header from file data.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from dissectors.constants import (
    FUSE_INIT_EXT,
    FUSE_MAX_PAGES,
    FUSE_OVER_IO_URING,
    INIT_FLAGS,
    NO_REPLY_OPCODES,
    Opcode,
)
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, offset, put, reader
from dissectors.quick import (
    DATA_NOTIFY,
    DATA_REPLIES,
    DATA_REQUESTS,
    peek_reply,
    peek_request,
    snap,
)
from dissectors.structs import (
    FuseInitIn,
    FuseInitOut,
    FuseInitOutCompat22,
    FuseOutHeader,
    FuseWriteIn,
)
from traces import TraceWriter
from traces.writer import NativeAppender

from ..exchange.channel import BUFFER_SIZE, ROOM
from ..features import max_pages_limit, seqpacket_limit

log = logging.getLogger(__name__)

_WRITE_HEADERS = IN_HEADER_SIZE + len(bytes(FuseWriteIn()))
_DEFAULT_MAX_PAGES = 32  # the kernel's max_pages when the server does not say (FUSE_MAX_PAGES)


class NotBuilt(RuntimeError):
    """The C part is missing: installed without a compiler, or a tree nobody installed."""


def native() -> ModuleType:
    """`_fastpath`, the relay's C lanes (they append through `traces._append`)."""
    try:
        from . import _fastpath
    except ImportError as exc:
        raise NotBuilt(f"recording needs the C part that `pip install -e .` builds with gcc "
                       f"and python3-dev (README, command 1): {exc}") from exc
    return _fastpath


#: INIT flags the relay cannot carry, and why (the reason recorded with the alteration).
UNRELAYABLE: dict[int, str] = {
    FUSE_OVER_IO_URING: "FUSE-over-io_uring bypasses the /dev/fuse reads and writes the "
                        "proxy relays",
}
_INIT_FLAGS = reader(FuseInitIn, "flags", "flags2")  # from fuse_init_in's first byte
_FLAGS_AT = IN_HEADER_SIZE + offset(FuseInitIn, "flags")
_NO_REPLY = NO_REPLY_OPCODES | {Opcode.INTERRUPT}


def mask_init(raw: bytes | memoryview, mask: int) -> tuple[bytes, str] | None:
    """INIT request bytes with the `mask` flags the kernel offered cleared, and the reason;
    None when it offered none of them. flags2 (bits 32..63) counts only with INIT_EXT."""
    if len(raw) < _FLAGS_AT + 4:
        return None
    has_flags2 = len(raw) >= IN_HEADER_SIZE + _INIT_FLAGS.size
    flags, flags2 = _INIT_FLAGS.unpack_from(raw, IN_HEADER_SIZE) if has_flags2 else (
        struct.unpack_from("<I", raw, _FLAGS_AT)[0], 0)
    offered = flags | (flags2 << 32 if flags & FUSE_INIT_EXT else 0)
    dropped = offered & mask
    if not dropped:
        return None
    kept = offered & ~dropped
    out = bytearray(raw)
    put(FuseInitIn, "flags", out, kept & 0xFFFFFFFF, IN_HEADER_SIZE)
    if has_flags2 and flags & FUSE_INIT_EXT:
        put(FuseInitIn, "flags2", out, kept >> 32, IN_HEADER_SIZE)
    names = "|".join(name for bit, name in INIT_FLAGS.items() if dropped & bit)
    why = "; ".join(text for bits, text in UNRELAYABLE.items() if dropped & bits)
    return bytes(out), f"masked {names} in INIT: {why}"


_OUT = reader(FuseOutHeader, "len", "error", "unique")
PIECE_WAIT_MS = 200  # the pieces of one splice arrive back to back; longer means no more come
MAX_LANES = 8  # reply lanes; the C side allows 16
SPIN_US = 300  # how long the C loop polls after a message before it sleeps (see _fastpath.c)
_MAX_NOTIFY_CODE = 64  # notification codes are small (7.45 ends at 9); room to grow


_PAGE = os.sysconf("SC_PAGE_SIZE")
_INIT_OUT_SIZES = ((len(bytes(FuseInitOut())), FuseInitOut),
                   (len(bytes(FuseInitOutCompat22())), FuseInitOutCompat22))


def _init_out(body: bytes) -> tuple[Any, int] | None:
    """fuse_init_out as the kernel reads it (the 7.22 layout when shorter), and its size;
    None before 7.5 (max_write 4096)."""
    for size, struct_class in _INIT_OUT_SIZES:
        if len(body) >= size:
            return struct_class(body[:size]), size
    return None


def _sizes(init: Any, pages_limit: int) -> tuple[int, int | None]:
    """(max_write, max_pages or None when not negotiated) as the kernel takes them."""
    pages = (max(1, min(init.max_pages, pages_limit))
             if int(init.flags) & FUSE_MAX_PAGES and "max_pages" in init.fields else None)
    return max(4096, init.max_write), pages


def fit_init_reply(raw: bytes | memoryview, limit: int, pages_limit: int
                   ) -> tuple[bytes, str] | None:
    """The INIT reply with max_write and max_pages lowered so that a WRITE request and a
    READ reply fit in a `limit`-byte message, and the reason; None when they fit."""
    body = bytes(raw[OUT_HEADER_SIZE:])
    parsed = _init_out(body)
    if parsed is None:
        return None
    init, size = parsed
    max_write, pages = _sizes(init, pages_limit)
    fit_write = (limit - _WRITE_HEADERS) // _PAGE * _PAGE
    fit_pages = (limit - OUT_HEADER_SIZE) // _PAGE
    changed = []
    if max_write > fit_write:
        init.max_write = fit_write
        changed.append(f"max_write {max_write} to {fit_write}")
    if pages is not None and pages > fit_pages:
        init.max_pages = fit_pages
        changed.append(f"max_pages {pages} to {fit_pages}")
    if not changed:
        return None
    return (bytes(raw[:OUT_HEADER_SIZE]) + bytes(init)[:size] + body[size:],
            f"lowered {' and '.join(changed)} in INIT: a SOCK_SEQPACKET message carries at "
            f"most {limit} bytes here")


def buffer_size(init_reply: bytes | memoryview, pages_limit: int) -> int:
    """How big the buffers must be once the kernel took this INIT reply: a read of
    /dev/fuse must fit a WRITE of max_write (as the kernel stores it, at least 4096) plus
    its headers, and a reply may carry max_pages pages (capped by `pages_limit`, the
    sysctl), each with `ROOM` to spare; never less than `BUFFER_SIZE`."""
    parsed = _init_out(bytes(init_reply[OUT_HEADER_SIZE:]))
    if parsed is None:
        return BUFFER_SIZE
    max_write, pages = _sizes(parsed[0], pages_limit)
    largest = max(_WRITE_HEADERS + max_write,
                  OUT_HEADER_SIZE + (pages or _DEFAULT_MAX_PAGES) * _PAGE)
    return max(BUFFER_SIZE, largest + ROOM)


def default_lanes() -> int:
    """Reply lanes: one per CPU this process may use, at least two (a lane waiting in the
    kernel must never be the only one) and at most `MAX_LANES`."""
    return max(2, min(MAX_LANES, len(os.sched_getaffinity(0))))


def default_spin_us() -> int:
    """SPIN_US when this process may run on two CPUs or more; on one, polling would only
    keep the server from running."""
    return SPIN_US if len(os.sched_getaffinity(0)) > 1 else 0


class Interleaved(Exception):
    """Two spliced replies arrived cut into each other."""


class Reassembler:
    """Whole replies from the socket's messages (see the module docstring).

    `pending(unique)` says whether a request with that unique awaits a reply: with it a
    fragment of file data is told from the header of a new message, which a multi-threaded
    server may send while another thread's spliced reply is still arriving.
    """

    def __init__(self, pending: Callable[[int], bool], limit: int = BUFFER_SIZE) -> None:
        self.pending = pending
        self.limit = limit  # the longest message a header may claim
        self.partial: bytearray | None = None
        self.want = 0
        self.sizes: list[int] = []

    def _header(self, raw: memoryview | bytes) -> tuple[int, int] | None:
        """(len, size received) of a plausible fuse_out_header starting `raw`, else None."""
        if len(raw) < OUT_HEADER_SIZE:
            return None
        length, error, unique = _OUT.unpack_from(raw)
        if not OUT_HEADER_SIZE <= length <= self.limit:
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
    """Relays messages both ways, in lanes, until the kernel says ENODEV and the server's
    end closes.

    Lanes: one thread carries requests (/dev/fuse → socket); `lanes` threads carry replies
    (socket → /dev/fuse), each taking one whole message from the socket and writing it,
    so the replies of several server threads reach the kernel in parallel and none waits
    behind another; notifications are written by the C loop's pool (`_fastpath.c`), so
    one the kernel holds on a lock never holds back the reply that releases it. With one
    lane (no seccomp trap: spliced replies may arrive in pieces) replies keep their order
    and `Reassembler` puts pieces back together.

    Before INIT is answered only the request lane and reply lane 0 run; the request lane
    reads nothing more until the INIT reply has been written (the kernel sends nothing
    else meanwhile), so every lane sizes its buffer from what the kernel took.

    `unmounted` is set when /dev/fuse reads ENODEV (unmounted or aborted), `server_closed`
    when every reply lane read end-of-file (the last holder of the server's end closed
    it); `changed` is called after either, from a lane's thread. The writer must append
    through the native appender (`traces._append`): the C lanes write through its C API.
    """

    def __init__(self, devfd: int, sock: socket.socket, writer: TraceWriter, snaplen: int,
                 init_mask: int = FUSE_OVER_IO_URING, spin_us: int | None = None,
                 changed: Callable[[], None] | None = None, lanes: int | None = None,
                 record_messages: bool = True) -> None:
        self.devfd = devfd
        self.sock = sock
        self.writer = writer
        self.snaplen = snaplen
        self.init_mask = init_mask
        self.changed = changed or (lambda: None)
        self.unmounted = threading.Event()
        self.server_closed = threading.Event()
        self.init_answered = threading.Event()
        self.broken: str | None = None  # why relaying had to stop
        self.lanes = default_lanes() if lanes is None else lanes
        fast = native()
        if not isinstance(writer.appender, NativeAppender):
            raise TypeError("the relay's TraceWriter must append through traces._append")
        self._pump = fast.Pump(devfd=devfd, sockfd=sock.fileno(), appender=writer.appender,
                               snaplen=snaplen, bufsize=BUFFER_SIZE, data_request=DATA_REQUESTS,
                               data_reply=DATA_REPLIES, data_notify=DATA_NOTIFY,
                               no_reply=_NO_REPLY, to_python={Opcode.INIT},
                               spin_us=default_spin_us() if spin_us is None else spin_us,
                               piece_wait_ms=PIECE_WAIT_MS, lanes=self.lanes)
        self._reassembler = (Reassembler(lambda unique: self._pump.pending_get(unique) is not None)
                             if self.lanes == 1 else None)
        self.record_messages = record_messages  # False: relay only (`record --forward-only`)
        if not record_messages:
            self._pump.stop_recording()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._reply_lanes = 0  # reply lanes running

    def start(self) -> None:
        self._spawn(self._requests, "relay-requests")
        self._start_reply_lane(0)

    def _spawn(self, body: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=self._guarded, args=(body,), name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _start_reply_lane(self, lane: int) -> None:
        with self._lock:
            self._reply_lanes += 1
        self._spawn(lambda: self._replies(lane), f"relay-replies-{lane}")

    def join(self, timeout: float) -> bool:
        """Wait for every lane (if started); True when all ended."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._late_rejections()
        return not any(thread.is_alive() for thread in threads)

    @property
    def stats(self) -> Stats:
        pump = self._pump
        return Stats(pump.requests_relayed, pump.replies_relayed, pump.request_bytes,
                     pump.reply_bytes)

    @property
    def requests_running(self) -> bool:
        """Whether requests may still come: /dev/fuse has not said ENODEV."""
        return not self.unmounted.is_set() and self._pump.dev_open

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as exc:  # a bug here must still end the session, not hang it
            log.exception("relay failed")
            self._stop(f"relay failed: {exc!r}")

    def _stop(self, why: str) -> None:
        """Relaying cannot go on: say why, and let the session end."""
        self.broken = why
        self._record(self.writer.event, "proxy_error", reason=why)
        self.unmounted.set()
        self.server_closed.set()
        self.changed()

    def _record(self, method: Callable[..., None], *args: Any, **meta: Any) -> None:
        """Record, or once the trace cannot be written (disk full …; the writer keeps
        where and why, and the session reports it at the end) go on relaying unrecorded:
        the user's mount keeps working."""
        if self.writer.stopped is not None:
            return
        try:
            method(*args, **meta)
        except (OSError, ValueError):
            self._pump.stop_recording()

    def _requests(self) -> None:
        """The request lane: the C loop relays; what it hands back is dealt with here
        (replies too: it relays those it finds while it polls)."""
        while True:
            what, *rest = self._pump.run_requests()
            if what == "request":
                if self._request(rest[0]) == Opcode.INIT:
                    self._await_init()
            elif what == "unsent":
                unique, opcode, err = rest
                self._record(self.writer.event, "request_not_forwarded", unique=unique,
                             opcode=opcode, errno=err)
            elif what == "request_end":
                if rest[0] and rest[0] != errno.ENODEV:
                    self._record(self.writer.event, "proxy_error",
                                 reason=f"reading /dev/fuse: {os.strerror(rest[0])}")
                self.unmounted.set()
                self.changed()
                return
            elif not self._reply_outcome(what, rest):
                return

    def _await_init(self) -> None:
        """Read nothing more until INIT is answered (the buffers grow then), or the
        connection or the server is gone."""
        while not self.init_answered.wait(0.1):
            if self.server_closed.is_set() or self._pump.connection_gone():
                return

    def _replies(self, lane: int) -> None:
        """A reply lane: the C loop relays; what it hands back is dealt with here."""
        while True:
            what, *rest = self._pump.run_replies(lane)
            if what == "reply_end":
                self._flush_pieces()
                if rest[0] and rest[0] not in (errno.ECONNRESET, errno.EBADF):
                    self._record(self.writer.event, "proxy_error",
                                 reason=f"reading the server's socket: {os.strerror(rest[0])}")
                with self._lock:
                    self._reply_lanes -= 1
                    last = self._reply_lanes == 0
                if last:
                    self.server_closed.set()
                    self.changed()
                return
            if not self._reply_outcome(what, rest):
                return

    def _reply_outcome(self, what: str, rest: list[Any]) -> bool:
        """A reply-side outcome a lane hands back; False when relaying cannot go on."""
        self._late_rejections()
        if what == "reply":
            return self._reply_piece(rest[0])
        if what == "rejected":
            self._rejected(*rest)
        elif what == "idle":  # no more pieces came
            self._flush_pieces()
        elif what == "oversize":
            self._record(self.writer.event, "proxy_error",
                         reason=f"a {rest[0]}-byte message from the server exceeds the "
                                f"relay's {self._pump.bufsize}-byte buffer; dropped")
        return True

    def _late_rejections(self) -> None:
        """Notifications the kernel refused after their lane had gone on (see
        `_fastpath.c`): recorded when next seen, after the records that followed them."""
        for code, err in self._pump.late_rejections():
            if code < 0:
                self._record(self.writer.event, "proxy_error",
                             reason=f"{err} more refused notifications were not recorded")
            else:
                self._rejected(0, None, err, self._pump.connection_gone(), notify_code=code)

    # --- kernel → server ----------------------------------------------------------------

    def _request(self, raw: bytes) -> int | None:
        """A request the C loop leaves to us: INIT (maybe altered), or one too odd for its
        tables. Recorded, then forwarded, as there. Returns its opcode."""
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
        if self.record_messages:
            self._record(self.writer.request, kept, **meta)
        try:
            self.sock.send(raw)
        except OSError as exc:
            self._pump.pending_pop(unique)
            self._record(self.writer.event, "request_not_forwarded", unique=unique,
                         opcode=opcode, errno=exc.errno)
            return opcode
        self._pump.count(True, len(raw))
        return opcode

    # --- server → kernel ----------------------------------------------------------------

    def _reply_piece(self, raw: bytes) -> bool:
        """A message the C loop leaves to us: a piece of a spliced reply, a header that
        lies, INIT's reply. False when the relay cannot go on. With several lanes there
        are no pieces (the trap sends spliced replies whole): a header that lies is
        forwarded as it came, and refused by the kernel as it would be directly."""
        if self._reassembler is None:
            self._forward((memoryview(raw), None))
            return True
        try:
            whole = self._reassembler.feed(memoryview(raw))
        except Interleaved as exc:
            self._stop(f"{exc}: the server splices replies from several threads at once, "
                       f"which this relay cannot take apart")
            return False
        if whole is not None:
            self._forward(whole)
        self._pump.pieces = self._reassembler.partial is not None
        return True

    def _flush_pieces(self) -> None:
        stale = self._reassembler.flush() if self._reassembler is not None else None
        if stale is not None:
            self._forward(stale)
        if self._reassembler is not None:
            self._pump.pieces = False

    def _rejected(self, unique: int, opcode: int | None, err: int, gone: bool,
                  **more: Any) -> None:
        """`connection_gone`: refused because the mount had ended (nobody's bug)."""
        self._record(self.writer.event, "reply_rejected", unique=unique, opcode=opcode,
                     write_errno=err, connection_gone=gone, **more)

    def _forward(self, whole: tuple[memoryview | bytearray, list[int] | None]) -> None:
        """Record one reply or notification, then write it to /dev/fuse."""
        raw, pieces = whole
        error, unique = peek_reply(raw)
        opcode = self._pump.pending_pop(unique) if unique else None
        meta: dict[str, Any] = {}
        if opcode == Opcode.INIT and not error:
            altered = fit_init_reply(raw, self._message_limit(), max_pages_limit())
            if altered is not None:
                meta = {"original": bytes(raw), "reason": altered[1]}
                raw = altered[0]
        kept, true_len = snap(raw, False, opcode, self.snaplen)
        if true_len is not None:
            meta["len"] = true_len
        if pieces is not None:
            meta["fragments"] = pieces
        if self.record_messages:
            self._record(self.writer.reply, kept, **meta)
        self._pump.count(False, len(raw))
        try:
            os.write(self.devfd, raw)
        except OSError as exc:
            self._rejected(unique, opcode, exc.errno or errno.EIO, self._pump.connection_gone())
        else:
            if opcode == Opcode.INIT and not error:
                self._grow(buffer_size(raw, max_pages_limit()))
        if opcode == Opcode.INIT:
            if not self.init_answered.is_set():
                for lane in range(1, self.lanes):
                    self._start_reply_lane(lane)
            self.init_answered.set()
            self.changed()

    def _grow(self, size: int) -> None:
        """Buffers for the sizes the kernel just took."""
        if size <= self._pump.bufsize:
            return
        try:
            self._pump.resize(size)
        except MemoryError:
            self._record(self.writer.event, "proxy_error",
                         reason=f"the INIT reply asks for {size}-byte messages, more than "
                                f"this process can allocate: the kernel will refuse reads")
            return
        if self._reassembler is not None:
            self._reassembler.limit = size

    def _message_limit(self) -> int:
        """The largest message our end of the socket sends (the server's end is set up
        the same way, `server_socketpair`); the kernel reports twice the size set."""
        return seqpacket_limit(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)
