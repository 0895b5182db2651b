"""The relay's pumps on a socketpair standing in for /dev/fuse, and the trace appenders
they write through: boundaries, record-before-forward, the snap length, the unique → opcode
table under load, refused messages, and a trace that stops growing."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from dissectors import FuseInHeader, FuseOutHeader
from dissectors.constants import (
    FUSE_INIT_EXT,
    FUSE_MAX_PAGES,
    FUSE_OVER_IO_URING,
    NotifyCode,
    Opcode,
)
from dissectors.structs import (
    FuseData,
    FuseInitIn,
    FuseInitOut,
    FuseInitOutCompat22,
    FuseNotifyStoreOut,
    FuseReadIn,
    FuseWriteIn,
)
from inspector.features import seqpacket_limit

pytest.importorskip(
    "inspector.record._fastpath",
    reason="the relay's C extension is not built (pip install -e . needs gcc, python3-dev)",
)
from traces._append import Appender
from inspector.record.relay import (
    BUFFER_SIZE,
    ROOM,
    Relay,
    buffer_size,
    fit_init_reply,
    mask_init,
)
from inspector.testing import recorded_server
from record_support import read_uncached
from traces import TraceReader, TraceWriter

if TYPE_CHECKING:
    from conftest import FsDirs

REPO = Path(__file__).resolve().parents[2]


def _reply(unique: int, data: bytes) -> bytes:
    return bytes(FuseOutHeader(unique=unique) / FuseData(data=data))


def _init(flags: int, flags2: int = 0) -> bytes:
    return bytes(FuseInHeader(opcode=Opcode.INIT, unique=2) /
                 FuseInitIn(flags=flags, flags2=flags2, max_readahead=131072))


# --- the relay, with a socketpair as /dev/fuse ------------------------------------------

class FakeDevice:
    """The kernel's side of /dev/fuse as a SEQPACKET socket: one message per read/write,
    like the device. Closing it makes the relay's reads return end-of-file."""

    def __init__(self) -> None:
        self.kernel, self.device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.kernel, self.device):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)


def test_relay_records_before_forwarding_and_keeps_boundaries(tmp_path: Path) -> None:
    dev = FakeDevice()
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    writer = TraceWriter(tmp_path / "t.fzt", {"source": "test"}, appender=Appender)
    relay = Relay(dev.device.fileno(), ours, writer, snaplen=100)
    relay.start()
    init = _init(0x3FFFFFFF | FUSE_INIT_EXT, FUSE_OVER_IO_URING >> 32)  # a kernel with io_uring on
    read = bytes(FuseInHeader(opcode=Opcode.READ, unique=4, nodeid=2) / FuseReadIn(size=1 << 20))
    dev.kernel.send(init)
    dev.kernel.send(read)  # a kernel sends nothing before INIT is answered: the relay waits
    assert server.recv(1 << 21) == mask_init(init, FUSE_OVER_IO_URING)[0]  # type: ignore[index]
    server.send(_reply(2, b""))
    assert len(dev.kernel.recv(100)) == 16
    assert server.recv(1 << 21) == read
    big = _reply(4, os.urandom(1 << 20))
    server.send(big)
    assert dev.kernel.recv(1 << 21) == big  # one message, whole
    server.close()
    dev.kernel.close()  # the relay's writes now fail: EPIPE, recorded
    assert relay.join(5.0)
    writer.close()
    records = list(TraceReader(tmp_path / "t.fzt"))
    assert [r.kind.name for r in records] == ["REQUEST", "REPLY", "REQUEST", "REPLY"]
    assert records[0].meta["original"] == init and "io_uring" in records[0].meta["reason"]
    assert records[3].true_len == len(big) and len(records[3].raw or b"") == 16 + 100
    assert relay.stats.requests == 2 and relay.stats.replies == 2
    assert relay.server_closed.is_set()


def test_relay_records_a_rejected_reply_after_it(tmp_path: Path) -> None:
    dev = FakeDevice()
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer = TraceWriter(tmp_path / "t.fzt", {}, appender=Appender)
    relay = Relay(dev.device.fileno(), ours, writer, snaplen=0)
    dev.kernel.shutdown(socket.SHUT_RD)  # writes to the "device" now fail (EPIPE)
    relay.start()
    server.send(_reply(9, b"late"))
    server.close()
    assert relay.server_closed.wait(5.0)
    dev.kernel.close()  # and the request pump reads end-of-file
    assert relay.join(5.0)
    writer.close()
    reply, rejected = list(TraceReader(tmp_path / "t.fzt"))
    assert reply.is_reply and reply.raw == _reply(9, b"late")
    assert rejected.event == "reply_rejected"
    assert (rejected.meta["unique"], rejected.meta["write_errno"]) == (9, errno.EPIPE)



@pytest.mark.parametrize("lanes", [1, 2])
def test_relay_forwards_a_reply_longer_than_it_says(tmp_path: Path, lanes: int) -> None:
    """A server bug, not a splice: the header claims more than was sent. It still reaches
    the kernel (which refuses it) and the trace, as it would without the relay: with one
    lane once no piece follows, with several (no pieces: the trap sends splices whole) at
    once."""
    dev = FakeDevice()
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer = TraceWriter(tmp_path / "t.fzt", {}, appender=Appender)
    relay = Relay(dev.device.fileno(), ours, writer, snaplen=0, lanes=lanes)
    relay.start()
    read = bytes(FuseInHeader(opcode=Opcode.READ, unique=6, nodeid=2) / FuseReadIn(size=4096))
    dev.kernel.send(read)
    assert server.recv(4096) == read
    bad = bytearray(_reply(6, b"x" * 100))
    struct.pack_into("<I", bad, 0, 4096 + 16)
    server.send(bytes(bad))
    assert dev.kernel.recv(8192) == bad  # with one lane after PIECE_WAIT_MS
    server.close()
    assert relay.server_closed.wait(5.0)
    dev.kernel.close()
    assert relay.join(5.0)
    writer.close()
    [reply] = [r for r in TraceReader(tmp_path / "t.fzt") if r.is_reply]
    assert reply.raw == bad and reply.meta == ({"fragments": [116]} if lanes == 1 else {})




class Session:
    """A relay between a FakeDevice and a server socket, writing `trace`."""

    def __init__(self, trace: Path, snaplen: int = 0, spin_us: int | None = None,
                 lanes: int | None = None) -> None:
        self.dev = FakeDevice()
        self.ours, self.server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.ours, self.server):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.trace = trace
        self.writer = TraceWriter(trace, {}, appender=Appender)
        self.relay = Relay(self.dev.device.fileno(), self.ours, self.writer, snaplen=snaplen,
                           spin_us=spin_us, lanes=lanes)
        self.relay.start()

    def end(self) -> list:
        self.server.close()
        assert self.relay.server_closed.wait(5.0)
        self.dev.kernel.close()
        assert self.relay.join(5.0)
        self.writer.close()
        return list(TraceReader(self.trace))


@pytest.mark.parametrize("spin_us", [0, 300])  # sleeping at once, polling first
def test_replies_find_their_opcode_with_a_thousand_requests_in_flight(tmp_path: Path,
                                                                      spin_us: int) -> None:
    """The native unique → opcode table grows and deletes under load: every READ reply,
    answered in reverse order, is still known as one (its data is cut to the snap length)."""
    s = Session(tmp_path / "t.fzt", snaplen=8, spin_us=spin_us)
    uniques = list(range(100, 2100, 2))
    for u in uniques:
        s.dev.kernel.send(bytes(FuseInHeader(opcode=Opcode.READ, unique=u, nodeid=2)
                                / FuseReadIn(size=64)))
        assert s.server.recv(4096)[8:16] == struct.pack("<Q", u)
    for u in reversed(uniques):
        s.server.send(_reply(u, u.to_bytes(8, "little") * 8))
        assert s.dev.kernel.recv(4096)[8:16] == struct.pack("<Q", u)
    records = s.end()
    replies = [r for r in records if r.is_reply]
    assert len(replies) == len(uniques)
    assert all(len(r.raw) == 16 + 8 and r.true_len == 16 + 64 for r in replies)
    assert s.relay.stats.requests == s.relay.stats.replies == len(uniques)


def test_write_data_and_store_notifications_are_cut_to_the_snap_length(tmp_path: Path) -> None:
    s = Session(tmp_path / "t.fzt", snaplen=10)
    write = bytes(FuseInHeader(opcode=Opcode.WRITE, unique=4, nodeid=2)
                  / FuseWriteIn(size=5000) / FuseData(data=b"w" * 5000))
    s.dev.kernel.send(write)
    assert s.server.recv(8192) == write  # forwarded whole
    store = bytes(FuseOutHeader(unique=0, error=NotifyCode.STORE)
                  / FuseNotifyStoreOut(nodeid=2, size=3000) / FuseData(data=b"s" * 3000))
    s.server.send(store)
    assert s.dev.kernel.recv(8192) == store
    s.server.send(_reply(4, struct.pack("<II", 5000, 0)))  # fuse_write_out: nothing to cut
    s.dev.kernel.recv(100)
    request, notify, reply = s.end()
    assert request.raw == write[:80 + 10] and request.true_len == len(write)
    assert notify.raw == store[:40 + 10] and notify.true_len == len(store)
    assert reply.true_len == len(reply.raw) == 24 and set(reply.meta) == {"server_ns"}


def test_a_reply_too_short_for_a_header_is_forwarded_as_sent(tmp_path: Path) -> None:
    s = Session(tmp_path / "t.fzt")
    s.server.send(b"\x10\x00")
    assert s.dev.kernel.recv(100) == b"\x10\x00"  # the kernel's to refuse, not ours
    [reply] = s.end()
    assert reply.raw == b"\x10\x00"


def test_relaying_goes_on_when_the_trace_stops_growing(small_disk: Path) -> None:
    """A full disk: the trace keeps what it had, the mount keeps working, and the writer
    says where and why the trace stopped (the appender meets it when it allocates)."""
    s = Session(small_disk / "t.fzt")
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):  # take what the appender has not
        while os.write(filler, b"f" * 1024):
            pass
    os.close(filler)
    for u in range(2, 200, 2):
        read = bytes(FuseInHeader(opcode=Opcode.READ, unique=u, nodeid=2) / FuseReadIn(size=4096))
        s.dev.kernel.send(read)
        assert s.server.recv(8192) == read  # relayed, recorded or not
        s.server.send(_reply(u, b"d" * 4096))
        assert s.dev.kernel.recv(8192) == _reply(u, b"d" * 4096)
        if s.relay.writer.stopped is not None and u > 20:
            break
    stopped = s.relay.writer.stopped
    assert stopped is not None and stopped[0] == errno.ENOSPC
    records = s.end()
    assert len(records) == stopped[1] > 0 and records[-1].offset < stopped[2]
    assert [r.kind.name for r in records] == ["REQUEST", "REPLY"] * (len(records) // 2) + (
        ["REQUEST"] if len(records) % 2 else [])


_FILL = """
import os, resource, signal, sys
sys.path.insert(0, {root!r})
from traces import FileAppender
from traces._append import Appender
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
appender = {{"native": Appender, "python": FileAppender}}[sys.argv[2]](fd)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    while True:
        appender.append(b"r" * 300)
except OSError as exc:
    print(exc.errno, appender.records, appender.bytes_written)
appender.close()
try:
    appender.append(b"late")
except ValueError as exc:
    print("closed:", exc)
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_a_write_cut_short_leaves_whole_records(tmp_path: Path, kind: str) -> None:
    """A file size limit makes the fourth 300-byte record a partial write: both appenders
    cut it back off, so the file holds three whole records and says why."""
    path = tmp_path / "t"
    out = subprocess.run([sys.executable, "-c", _FILL.format(root=str(REPO)), str(path), kind],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    first, second = out.splitlines()
    assert first == f"{errno.EFBIG} 3 900" and path.stat().st_size == 900
    assert second == "closed: trace writer is closed"


def test_record_without_the_c_part_says_how_to_build_it(tmp_path: Path) -> None:
    """An install without a compiler: `record` refuses in one line before mounting
    anything; the rest of fusetrace (here `show`) still works."""
    code = ("import sys; sys.modules['inspector.record._fastpath'] = None\n"
            "from inspector.cli import main; sys.exit(main(sys.argv[1:]))")
    run = [sys.executable, "-P", "-c", code]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    got = subprocess.run([*run, "record", "-w", str(tmp_path / "t.fzt"), "--", "true", str(mnt)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert got.returncode == 2 and not (tmp_path / "t.fzt").exists()
    assert got.stderr.startswith("fusetrace: error: recording needs the C part")
    assert "gcc and python3-dev" in got.stderr and len(got.stderr.splitlines()) == 1
    with TraceWriter(tmp_path / "u.fzt", {}) as writer:
        writer.request(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=2, nodeid=1)) + bytes(16))
    shown = subprocess.run([*run, "show", str(tmp_path / "u.fzt")], capture_output=True,
                           text=True, timeout=60, cwd=REPO)
    assert shown.returncode == 0 and "GETATTR" in shown.stdout


def test_a_full_server_socket_holds_requests_while_replies_flow(tmp_path: Path) -> None:
    """A server busy sending does not read: requests wait in the relay (in order, none
    lost) and its replies still reach the kernel, so neither side wedges the other."""
    dev = FakeDevice()
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    writer = TraceWriter(tmp_path / "t.fzt", {}, appender=Appender)
    relay = Relay(dev.device.fileno(), ours, writer, snaplen=0)
    relay.start()
    writes = [bytes(FuseInHeader(opcode=Opcode.WRITE, unique=u, nodeid=2)
                    / FuseWriteIn(size=8192) / FuseData(data=bytes([u % 256]) * 8192))
              for u in range(2, 402, 2)]
    for write in writes:  # 1.6 MiB: far more than the server's socket takes unread
        dev.kernel.send(write)
    server.settimeout(10)
    dev.kernel.settimeout(10)
    for u in (2, 4, 6):
        server.send(_reply(u, struct.pack("<II", 8192, 0)))
        assert dev.kernel.recv(100)[8:16] == struct.pack("<Q", u)
    assert [server.recv(1 << 16) for _ in writes] == writes
    server.close()
    assert relay.server_closed.wait(5.0)
    dev.kernel.close()
    assert relay.join(5.0)
    writer.close()
    assert relay.stats.requests == len(writes) and relay.stats.replies == 3


def test_a_spliced_reply_in_pieces_is_put_back_together(tmp_path: Path) -> None:
    """Without the seccomp trap a splice arrives in pieces; another request's whole reply
    may come between two of them."""
    s = Session(tmp_path / "t.fzt", lanes=1)  # pieces come only without the trap: one lane
    for u in (10, 12):
        s.dev.kernel.send(bytes(FuseInHeader(opcode=Opcode.READ, unique=u, nodeid=2)
                                / FuseReadIn(size=1 << 17)))
        s.server.recv(4096)
    big, small = _reply(10, os.urandom(100_000)), _reply(12, b"x")
    s.server.send(big[:40_000])
    s.server.send(small)
    s.server.send(big[40_000:])
    assert s.dev.kernel.recv(1 << 17) == small
    assert s.dev.kernel.recv(1 << 17) == big
    replies = [r for r in s.end() if r.is_reply]
    assert [r.raw for r in replies] == [small, big]
    assert replies[1].meta == {"fragments": [40_000, len(big) - 40_000]}


def test_a_cut_reply_is_given_up_on_while_requests_keep_coming(tmp_path: Path) -> None:
    """A header that claims more than came: it is forwarded once no piece has come for
    PIECE_WAIT_MS, even while the kernel keeps the relay busy with requests."""
    s = Session(tmp_path / "t.fzt", lanes=1)  # pieces come only without the trap: one lane
    s.dev.kernel.send(bytes(FuseInHeader(opcode=Opcode.READ, unique=6, nodeid=2)
                            / FuseReadIn(size=4096)))
    s.server.recv(4096)
    bad = bytearray(_reply(6, b"x" * 100))
    struct.pack_into("<I", bad, 0, 4096 + 16)
    s.server.send(bytes(bad))
    s.dev.kernel.setblocking(False)
    got, unique = None, 8
    for _ in range(100):  # up to 2 s, a request every 20 ms
        s.dev.kernel.send(bytes(FuseInHeader(opcode=Opcode.GETATTR, unique=unique, nodeid=1))
                          + bytes(16))
        unique += 2
        time.sleep(0.02)
        try:
            got = s.dev.kernel.recv(8192)
            break
        except BlockingIOError:
            continue
    assert got == bad
    s.dev.kernel.setblocking(True)
    s.end()


# --- buffers sized from what INIT negotiated -------------------------------------------

def _init_reply(**fields: int) -> bytes:
    return bytes(FuseOutHeader(unique=2) / FuseInitOut(**fields))


def test_buffers_fit_what_the_kernel_took_from_init() -> None:
    """max_write sizes the /dev/fuse reads (the kernel's EINVAL rule), max_pages within the
    sysctl sizes the replies; never below the 4 MiB a relay starts with."""
    page = os.sysconf("SC_PAGE_SIZE")
    big = _init_reply(max_write=16 << 20, max_pages=4096, flags=FUSE_MAX_PAGES)
    assert buffer_size(big, pages_limit=4096) == 80 + (16 << 20) + ROOM
    pages_only = _init_reply(max_write=1 << 20, max_pages=4096, flags=FUSE_MAX_PAGES)
    assert buffer_size(pages_only, pages_limit=8192) == 16 + 4096 * page + ROOM
    assert buffer_size(pages_only, pages_limit=256) == BUFFER_SIZE  # the sysctl caps it
    no_flag = _init_reply(max_write=1 << 20, max_pages=4096)  # max_pages not negotiated
    assert buffer_size(no_flag, pages_limit=8192) == BUFFER_SIZE
    old = bytes(FuseOutHeader(unique=2) / FuseInitOutCompat22(max_write=8 << 20))
    assert buffer_size(old, pages_limit=256) == 80 + (8 << 20) + ROOM


def test_an_init_reply_asking_more_than_a_message_carries_is_lowered_and_says_so() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    asked = _init_reply(max_write=8 << 20, max_pages=2048, flags=FUSE_MAX_PAGES, time_gran=1)
    limit = (4 << 20) + 4000
    raw, reason = fit_init_reply(asked, limit, pages_limit=4096) or (b"", "")
    got = FuseInitOut(raw[16:])
    assert len(raw) == len(asked) and raw[:16] == asked[:16] and got.time_gran == 1
    assert got.max_write == 4 << 20 and got.max_pages == (limit - 16) // page
    assert reason == (f"lowered max_write {8 << 20} to {4 << 20} and max_pages 2048 to "
                      f"{(limit - 16) // page} in INIT: a SOCK_SEQPACKET message carries at "
                      f"most {limit} bytes here")
    assert fit_init_reply(asked, limit, pages_limit=256) is not None  # max_write alone
    assert fit_init_reply(raw, limit, pages_limit=4096) is None  # it fits now
    assert 80 + (4 << 20) <= seqpacket_limit(16 << 20)  # libfuse's 4 MiB passes here


_LARGE_SERVER = """
import sys
import inspector.passthroughfs.server as server
server.MAX_WRITE, server.MAX_PAGES = {size}, {pages}
server.BUFFER_SIZE = server.MAX_WRITE + 8192
from inspector.passthroughfs.cli import main
sys.exit(main())
"""


@contextlib.contextmanager
def max_pages_limit_at(pages: int) -> Iterator[None]:
    """fs.fuse.max_pages_limit at `pages` while the block runs, then as it was. A
    connection takes the limit when it is made, so the block only needs to mount."""
    sysctl = Path("/proc/sys/fs/fuse/max_pages_limit")
    try:
        old = sysctl.read_text()
        sysctl.write_text(str(pages))
    except OSError as exc:
        pytest.skip(f"fs.fuse.max_pages_limit cannot be raised here: {exc.strerror}")
    try:
        yield
    finally:
        sysctl.write_text(old)


@pytest.mark.requires_fuse
@pytest.mark.timeout(60)
def test_a_server_negotiating_8_mib_requests_is_relayed(isolated: Path, fs_dirs: FsDirs) -> None:
    """max_write 8 MiB, max_pages 2048: with 4 MiB buffers every read of /dev/fuse would
    get EINVAL, and no SEQPACKET message carries 8 MiB. The INIT reply is lowered to what
    one message carries (recorded as altered), the buffers sized from it: an 8 MiB
    write(2) goes through in the largest pieces that fit, and reads back whole."""
    src, mnt = fs_dirs
    pages = 2048
    size = pages * os.sysconf("SC_PAGE_SIZE")
    argv = [sys.executable, "-c", _LARGE_SERVER.format(size=size, pages=pages),
            str(src), str(mnt), "--no-passthrough"]
    data = os.urandom(size)
    with contextlib.ExitStack() as stack:
        with max_pages_limit_at(pages):
            rec = stack.enter_context(recorded_server(argv, mnt, isolated / "t.fzt", cwd=REPO))
        fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert os.write(fd, data) == size
        finally:
            os.close(fd)
        assert read_uncached(mnt / "f") == data
        assert rec.unmount_and_wait() == 0, rec.output()
    assert (src / "f").read_bytes() == data
    limit = seqpacket_limit(16 << 20)
    writes: list[int] = []
    pending: dict[int, int] = {}
    with TraceReader(isolated / "t.fzt") as reader:
        for r in reader:
            assert r.event not in ("proxy_error", "request_not_forwarded", "reply_rejected"), r.meta
            if r.is_request and r.raw is not None:
                opcode, unique = struct.unpack_from("<4xIQ", r.raw)
                pending[unique] = opcode
                if opcode == Opcode.WRITE:
                    writes.append(r.true_len - 80)
            elif r.is_reply and r.raw is not None:
                opcode = pending.pop(struct.unpack_from("<8xQ", r.raw)[0], 0)
                if opcode == Opcode.INIT:
                    assert r.meta["reason"].startswith(f"lowered max_write {size} to ")
                    assert FuseInitOut(r.meta["original"][16:]).max_write == size
    largest = (limit - 80) // 4096 * 4096
    assert sum(writes) == size and max(writes) == largest, writes
