"""One server under test, kept running on one connection, and the requests streamed to it.

The server is started as `fusetrace replay` starts it (`replay.server.ServerUnderTest`:
its mountpoint argument becomes a socket, its /dev/fuse ioctls are emulated, nothing is
mounted). Requests taken from a recording are rewritten to this live session: their
node ids, file handles and the uniques INTERRUPT names are translated through what this
server's replies handed out (`learn`), and every request gets a unique of its own.

Every reply is checked as the kernel checks it (`Refusal`); the live session also keeps
what the kernel would know: node ids with their lookup counts (entry replies and each
READDIRPLUS entry, minus FORGET/BATCH_FORGET), open handles (minus RELEASE), open
backing ids (the emulated BACKING_OPEN/CLOSE). `history` is everything sent and
received since the start, so a failure can be written out as a trace and played again.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from dissectors import SessionDecoder
from dissectors.constants import (
    ERRNO_LIMIT,
    FOPEN_PASSTHROUGH,
    FUSE_INT_REQ_BIT,
    FUSE_ROOT_ID,
    NO_REPLY_OPCODES,
    Opcode,
)
from dissectors.offsets import OUT_HEADER_SIZE
from dissectors.opcodes import (
    DIR_HANDLE_OPS,
    ENTRY_REPLIES,
    FORGETS,
    OPEN_REPLIES,
    DIR_NODE_OPCODES,
    RELEASES,
    REMOVES,
    RENAMES,
    UNPAIRED,
)
from dissectors.context import DEFAULT_CONTEXT
from dissectors.flat import fixed_head
from dissectors.ids import field_offsets
from dissectors.structs import FuseDirent, FuseEntryOut
from inspector.lifecycles import wire
from inspector.replay.emulate import EmulatedKernel, IoctlLog, negotiated_depth
from inspector.replay.script import ReplayError
from inspector.replay.server import GRACE, Closed, ServerUnderTest

from .layout import (
    INTERRUPTED_AT,
    LEN_AT,
    NODEID_AT,
    U32,
    U64,
    UNIQUE_AT,
    Layout,
    forget_entries,
    forget_slots,
    reply_header,
    with_forgets,
)
from .outcome import Outcome, Refusal, Verdict, ended

#: Replies that must name a new node (fs/fuse/dir.c: create_new_entry): not LOOKUP's
_NEW_ENTRY = ENTRY_REPLIES - {Opcode.LOOKUP}
#: Requests whose handle is a directory's (the kernel never mixes the two kinds)
DIR_HANDLES = DIR_HANDLE_OPS - OPEN_REPLIES
#: Opens whose handle is for the node the request names (CREATE's is the new node's)
_OPENS_OF_NAMED = OPEN_REPLIES - ENTRY_REPLIES
_MODE_AT = OUT_HEADER_SIZE + field_offsets(FuseEntryOut)["attr.mode"][0]
START_TIMEOUT = 10.0  # seconds a server may take to start and answer INIT (a slow import)
_DIRENT_NAMELEN = field_offsets(FuseDirent)["namelen"][0]
_DIRENT_NAME = fixed_head(FuseDirent).st.size  # where the name starts
_LOOK = 0.25  # seconds between looks at whether a server slow to reply is still running


def with_copy(argv: Sequence[str], fresh: str, copy: str) -> list[str]:
    """`argv` with the directory `fresh` replaced by `copy` wherever it is named: as an
    argument, or as a path in one (`-o lowerdir=FRESH/lower,upperdir=FRESH/upper`)."""
    named = re.compile(r"(?<![^=,:])" + re.escape(fresh.rstrip("/")) + r"(?=/|,|:|$)")
    return [named.sub(lambda _: copy, a) for a in argv]


def names(argv: Sequence[str], fresh: str) -> bool:
    """Whether `argv` names the directory `fresh` (see `with_copy`)."""
    return with_copy(argv, fresh, "\0") != list(argv)


def _direntplus(msg: bytes) -> list[tuple[int, bytes, int]]:
    """(nodeid, name, attr.mode) of the READDIRPLUS entries that give the kernel a lookup."""
    out = []
    names = dict((name, node) for node, name in wire.direntplus_nodeids(msg))
    at = OUT_HEADER_SIZE
    while at + wire.ENTRY_OUT_SIZE <= len(msg) and names:
        node = U64.unpack_from(msg, at)[0]
        mode = U32.unpack_from(msg, at + _MODE_AT - OUT_HEADER_SIZE)[0]
        namelen = U32.unpack_from(msg, at + wire.ENTRY_OUT_SIZE + _DIRENT_NAMELEN)[0]
        name_at = at + wire.ENTRY_OUT_SIZE + _DIRENT_NAME
        name = bytes(msg[name_at:name_at + namelen])
        if names.get(name) == node:
            out.append((node, name, mode))
        at = name_at + ((namelen + 7) & ~7)
    return out


class StartError(Exception):
    """The server could not be started or did not answer INIT: an error, never a finding."""


class Failure(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.text())
        self.outcome = outcome


class LiveServer:
    def __init__(self, argv: Sequence[str], *, mountpoint: str | None = None,
                 route: str | None = None, fresh: str | None = None,
                 workdir: str | os.PathLike[str] | None = None) -> None:
        """`fresh`: a directory named in `argv` (see `with_copy`) that the server writes
        to; each start gets a pristine copy of it (under `workdir`) in its place."""
        self.argv, self.mountpoint, self.route = list(argv), mountpoint, route
        self.fresh = fresh
        self.workdir = Path(workdir) if workdir is not None else None
        self.server: ServerUnderTest | None = None
        self.layout = Layout(DEFAULT_CONTEXT)
        self.depth = 0
        self._reset()

    def _reset(self) -> None:
        self.next_unique = 2
        #: unique → (opcode, sent at, node, name) of requests waiting for their reply
        self.waiting: dict[int, tuple[int, float, int, bytes]] = {}
        self.parents: dict[int, int] = {}  # live node → the directory it was last found in
        self.children: dict[tuple[int, bytes], int] = {}  # (directory, name) → live node
        self.interrupts: set[int] = set()  # INTERRUPTs sent (a reply to one is optional)
        self.arrived: dict[int, bytes] = {}
        self.history: list[tuple[bool, bytes]] = []  # (is request, raw)
        self.nodes: dict[int, int] = {}  # recorded node id → live
        self.fhs: dict[int, int] = {}  # recorded handle → live
        self.uniques: dict[int, int] = {}  # recorded unique → live
        self.lookups: dict[int, int] = {}  # live node id → lookups the kernel would hold
        self.types: dict[int, int] = {FUSE_ROOT_ID: stat.S_IFDIR}  # live node id → S_IFMT
        self.open: dict[int, tuple[int, int]] = {}  # live handle → (opcode that opened it, node)
        self.gone_nodes: list[int] = []  # forgotten, and handles released: for hostile tries
        self.gone_fhs: list[int] = []
        self.latencies: list[float] = []
        self._p99, self._p99_n = 0.0, 0
        self.log_at = 0

    # --- start and stop ---------------------------------------------------------------

    def start(self, init: bytes, timeout: float) -> bytes:
        """Start the server and give it `init` (a recorded INIT request); its reply."""
        self.stop()
        self._reset()
        argv = self.argv
        if self.fresh is not None:
            assert self.workdir is not None
            copy = self.workdir / "state"
            shutil.rmtree(copy, ignore_errors=True)
            try:
                shutil.copytree(self.fresh, copy, symlinks=True)
            except OSError as exc:
                raise StartError(f"--fresh {self.fresh}: {exc}") from None
            argv = with_copy(argv, self.fresh, str(copy))
        try:
            self.server = ServerUnderTest(argv, IoctlLog(None, lambda call: None),
                                          lambda: self.depth, self.mountpoint, self.route)
            self.server.start()
        except ReplayError as exc:
            self.stop()
            raise StartError(str(exc)) from None
        try:
            reply = self.call(bytearray(init), max(timeout, START_TIMEOUT))
        except Failure as failure:
            log = self.output().strip().splitlines()[-3:]
            self.stop()
            raise StartError(f"the server did not answer INIT: {failure.outcome.text()}"
                             + (": " + " / ".join(log) if log else "")) from None
        assert reply is not None
        decoder = SessionDecoder()
        decoder.feed_request(init)
        brief = decoder.feed_reply(reply).brief
        ctx = decoder.ctx
        self.depth = negotiated_depth(ctx.dialect, ctx.flags, brief.get("max_stack_depth") or 0)
        self.layout = Layout(ctx)
        return reply

    def stop(self) -> None:
        """End the server at once (SIGKILL to whatever still holds its connection)."""
        if self.server is not None:
            self.server.kill()
            self.server.close()
            self.server = None

    @property
    def pid(self) -> int | None:
        proc = self.server.proc if self.server is not None else None
        return proc.pid if proc is not None else None

    def output(self) -> str:
        return self.server.server_output() if self.server is not None else ""

    def new_output(self) -> bytes:
        """What the server wrote since the last call (for feedback on new log lines)."""
        if self.server is None:
            return b""
        data = os.pread(self.server.output.fileno(), 1 << 16, self.log_at)
        self.log_at += len(data)
        return data

    # --- translate and send -------------------------------------------------------------

    def translate(self, opcode: int, raw: bytes) -> bytearray:
        """A recorded request rewritten to this session: node ids, handles and an
        INTERRUPT's target through what this server handed out."""
        out = bytearray(raw)
        for at, value in self.layout.node_words(opcode, out):
            live = self.nodes.get(value)
            if live is not None:
                U64.pack_into(out, at, live)
        for at, value in self.layout.fh_words(opcode, out):
            live = self.fhs.get(value)
            if live is not None:
                U64.pack_into(out, at, live)
        if opcode == Opcode.INTERRUPT and len(out) >= INTERRUPTED_AT + 8:
            target = U64.unpack_from(out, INTERRUPTED_AT)[0]
            U64.pack_into(out, INTERRUPTED_AT, self.uniques.get(target, target))
        return out

    def repair(self, opcode: int, raw: bytearray, pick: Callable[[list[int]], int]) -> bool:
        """Make a request one the kernel could send now: every node id it names held by
        the kernel (else another of the same type), every handle open (else another of
        its kind) and named with its own node, a directory where the kernel names one, no
        FORGET of a node with a file open on it (the open file holds the inode) or of more
        lookups than held, UNLINK and RMDIR only of a name the kernel holds, of the right
        type, no directory renamed below itself. False when there is nothing to put in
        place (`pick` chooses among candidates)."""
        forget = opcode in FORGETS
        opened = {node for _, node in self.open.values()} if forget else set()
        for at, node in list(self.layout.node_words(opcode, raw)):
            if forget and at == NODEID_AT and opcode == Opcode.BATCH_FORGET:
                continue  # BATCH_FORGET's header names no node
            want_dir = (at == NODEID_AT and opcode in DIR_NODE_OPCODES) or (
                opcode in RENAMES and at != NODEID_AT)  # newdir
            kind = stat.S_IFDIR if want_dir else self.types.get(node)
            held = (node in self.lookups and node not in opened
                    and (not want_dir or self.types.get(node) == stat.S_IFDIR))
            if (node == FUSE_ROOT_ID and not forget) or held or (node == 0 and at != NODEID_AT):
                continue
            same = [n for n in self.lookups if self.types.get(n) == kind and n not in opened]
            if kind == stat.S_IFDIR and not forget:
                same.append(FUSE_ROOT_ID)
            if not same:
                return False
            U64.pack_into(raw, at, pick(same))
        first_fh = next((at for at, _ in self.layout.fh_words(opcode, raw)), None)
        for at, fh in list(self.layout.fh_words(opcode, raw)):
            if fh not in self.open:
                fhs = self.handles(opcode)
                if not fhs:
                    return False
                fh = pick(fhs)
                U64.pack_into(raw, at, fh)
            if at == first_fh:  # the kernel names the file's own node with its handle
                U64.pack_into(raw, NODEID_AT, self.open[fh][1])
        if opcode in RENAMES and self._into_itself(opcode, raw):
            return False
        if opcode in REMOVES:  # the VFS looks the name up and checks its type first
            child = self.children.get((U64.unpack_from(raw, NODEID_AT)[0], self._name(opcode, raw)))
            if child is None or child not in self.lookups:
                return False
            if (self.types.get(child) == stat.S_IFDIR) != (opcode == Opcode.RMDIR):
                return False
        if opcode == Opcode.FORGET:
            count_at = self.layout.fields[opcode][0].at
            node = U64.unpack_from(raw, NODEID_AT)[0]
            if U64.unpack_from(raw, count_at)[0] > self.lookups.get(node, 0):
                U64.pack_into(raw, count_at, self.lookups.get(node, 0))
        elif opcode == Opcode.BATCH_FORGET:  # entries for one node add up; none is empty
            left = dict(self.lookups)
            kept = []
            for _, node, _, count in forget_slots(raw):
                count = min(count, left.get(node, 0))
                if count:
                    kept.append((node, count))
                    left[node] -= count
            if not kept:
                return False
            raw[:] = with_forgets(raw, kept)
        return True

    def _into_itself(self, opcode: int, raw: bytearray) -> bool:
        """A RENAME of a directory into itself or below it (the VFS refuses it first)."""
        words = dict(self.layout.node_words(opcode, raw))
        olddir, newdir = words.get(NODEID_AT), [v for a, v in words.items() if a != NODEID_AT]
        moved = self.children.get((olddir, self._name(opcode, raw)))
        if moved is None or not newdir:
            return False
        at, steps = newdir[0], 0
        while at is not None and steps < 256:
            if at == moved:
                return True
            at, steps = self.parents.get(at), steps + 1
        return False

    def _name(self, opcode: int, raw: bytes | bytearray) -> bytes:
        named = self.layout.names.get(opcode)
        if named is None:
            return b""
        end = raw.find(b"\0", named[0])
        return bytes(raw[named[0]:end if end >= 0 else len(raw)])

    def handles(self, opcode: int) -> list[int]:
        """Open handles of the kind `opcode` takes (a directory's or a file's)."""
        want_dir = opcode in DIR_HANDLES
        return [fh for fh, (op, _) in self.open.items() if (op == Opcode.OPENDIR) == want_dir]

    def send(self, raw: bytearray, recorded_unique: int | None = None) -> int:
        """Send a request (its len and unique set here); returns its unique."""
        assert self.server is not None
        opcode = U32.unpack_from(raw, 4)[0]
        if opcode == Opcode.INTERRUPT and len(raw) >= INTERRUPTED_AT + 8:
            unique = U64.unpack_from(raw, INTERRUPTED_AT)[0] | FUSE_INT_REQ_BIT
        else:
            unique = self.next_unique
            self.next_unique += 2
        U32.pack_into(raw, LEN_AT, len(raw))
        U64.pack_into(raw, UNIQUE_AT, unique)
        if recorded_unique is not None:
            self.uniques[recorded_unique] = unique
        msg = bytes(raw)
        self.history.append((True, msg))
        try:
            self.server.send(msg)
        except Closed:
            raise Failure(self._ended(opcode)) from None
        if opcode == Opcode.INTERRUPT:
            self.interrupts.add(unique)
        elif opcode not in NO_REPLY_OPCODES:
            self.waiting[unique] = (opcode, time.monotonic(), U64.unpack_from(msg, NODEID_AT)[0],
                                    self._name(opcode, msg) if opcode in ENTRY_REPLIES else b"")
        if opcode in FORGETS:
            self._forget(opcode, msg)
        elif opcode in RELEASES:
            fh = U64.unpack_from(msg, self.layout.fhs[opcode][0].at)[0]
            if self.open.pop(fh, None) is not None:
                self.gone_fhs.append(fh)
                for recorded in [r for r, live in self.fhs.items() if live == fh]:
                    del self.fhs[recorded]
        return unique

    def call(self, raw: bytearray, timeout: float, recorded_unique: int | None = None) -> bytes | None:
        """Send and wait for the reply (None for requests that get none)."""
        opcode = U32.unpack_from(raw, 4)[0]
        unique = self.send(raw, recorded_unique)
        if opcode in UNPAIRED:
            return None
        return self.reply(unique, timeout)

    def reply(self, unique: int, timeout: float) -> bytes:
        """The reply to `unique`, checked; `Failure` when the server died, hung or sent
        something the kernel refuses."""
        assert self.server is not None
        deadline = time.monotonic() + timeout
        while unique not in self.arrived:
            opcode = self.waiting.get(unique, (0, 0.0, 0, b""))[0]
            try:
                msg = self.server.receive(min(deadline, time.monotonic() + _LOOK))
            except Closed:
                raise Failure(self._ended(opcode)) from None
            except ReplayError as exc:
                raise Failure(Outcome(Verdict.REFUSED, opcode, refusal=Refusal.TOO_BIG,
                                      detail=str(exc))) from None
            if msg is not None:
                self._take(msg)
                continue
            proc = self.server.proc
            if proc is not None and proc.poll() is not None:  # gone, its socket held elsewhere
                raise Failure(self._ended(opcode))
            if time.monotonic() >= deadline:
                raise Failure(Outcome(Verdict.HUNG, opcode, detail=f"within {timeout:g} s"))
        return self.arrived.pop(unique)

    def outstanding(self) -> list[int]:
        """Uniques still waiting for a reply."""
        return list(self.waiting)

    # --- what comes back ------------------------------------------------------------------

    def _take(self, msg: bytes) -> None:
        self.history.append((False, msg))
        length, error, unique = reply_header(msg)
        if unique == 0:
            return  # a notification
        if unique in self.interrupts:  # EAGAIN, ENOSYS …: the header alone, whenever
            if len(msg) != OUT_HEADER_SIZE or length != len(msg):
                raise Failure(Outcome(Verdict.REFUSED, Opcode.INTERRUPT,
                                      refusal=Refusal.INTERRUPT_REPLY, detail=f"{len(msg)} bytes"))
            return
        got = self.waiting.pop(unique, None)
        if got is None:
            raise Failure(Outcome(Verdict.REFUSED, 0, refusal=Refusal.UNIQUE,
                                  detail=f"unique {unique}"))
        opcode, sent, node, name = got
        self.latencies.append(time.monotonic() - sent)
        problem = self._refused(opcode, msg, length, error)
        if problem is not None:
            refusal, detail = problem
            raise Failure(Outcome(Verdict.REFUSED, opcode, refusal=refusal, detail=detail))
        if error == 0:
            self._given(opcode, msg, node, name)
        self.arrived[unique] = msg

    def _refused(self, opcode: int, msg: bytes, length: int,
                 error: int) -> tuple[Refusal, str] | None:
        body = len(msg) - OUT_HEADER_SIZE
        if length != len(msg):
            return Refusal.LENGTH, f"len {length}, {len(msg)} bytes"
        if error > 0 or error <= -ERRNO_LIMIT:
            return Refusal.ERRNO, f"error {error}"
        if error:
            return (Refusal.ERROR_BODY, f"{body} bytes") if body else None
        want = self.layout.reply_sizes.get(opcode)
        if want is not None and body != want:
            return Refusal.SIZE, f"{body} bytes, the kernel takes exactly {want}"
        if opcode in _NEW_ENTRY:
            node = wire.entry_nodeid(msg)
            if node in (0, FUSE_ROOT_ID):
                return Refusal.BAD_NODEID, f"node id {node}"
        if opcode in OPEN_REPLIES:
            got = wire.open_out(opcode, msg)
            if got is not None and got[1] & FOPEN_PASSTHROUGH and self.depth:
                assert self.server is not None and self.server.trap is not None
                kernel = self.server.trap.performer
                assert isinstance(kernel, EmulatedKernel)
                if got[2] not in kernel.open_ids:
                    return Refusal.BACKING_ID, f"backing id {got[2]}"
        return None

    def _given(self, opcode: int, msg: bytes, asked: int, name: bytes) -> None:
        """What a successful reply hands the kernel: lookups and open handles."""
        if opcode in ENTRY_REPLIES:
            node = wire.entry_nodeid(msg)
            if node:
                self.lookups[node] = self.lookups.get(node, 0) + 1
                if opcode != Opcode.LINK:  # a hard link's node may sit in several
                    self.parents[node] = asked
                self.children[(asked, name)] = node
                if len(msg) >= _MODE_AT + 4:
                    self.types[node] = stat.S_IFMT(U32.unpack_from(msg, _MODE_AT)[0])
        elif opcode == Opcode.READDIRPLUS:
            for node, entry, mode in _direntplus(msg):
                self.lookups[node] = self.lookups.get(node, 0) + 1
                self.children[(asked, entry)] = node
                self.types[node] = stat.S_IFMT(mode)
        if opcode in OPEN_REPLIES:
            got = wire.open_out(opcode, msg)
            if got is not None:  # CREATE's handle is the new node's
                node = wire.entry_nodeid(msg) if opcode not in _OPENS_OF_NAMED else asked
                self.open[got[0]] = (opcode, node or asked)

    def _forget(self, opcode: int, msg: bytes) -> None:
        if opcode == Opcode.FORGET:
            pairs = list(wire.forgets(opcode, msg, U64.unpack_from(msg, NODEID_AT)[0]))
        else:
            pairs = [(node, n) for _, node, n in forget_entries(msg)]
        for node, n in pairs:
            left = self.lookups.get(node)
            if left is None:
                continue
            if left <= n:
                del self.lookups[node]
                self.types.pop(node, None)  # a pointer-valued id may come back as anything
                self.gone_nodes.append(node)
                # the server may hand the same id out again for something else
                for recorded in [r for r, live in self.nodes.items() if live == node]:
                    del self.nodes[recorded]
            else:
                self.lookups[node] = left - n

    def learn(self, opcode: int, recorded: bytes | None, live: bytes) -> None:
        """Pair what a recorded reply handed out with what this server's reply did."""
        if not recorded or reply_header(recorded)[1] or reply_header(live)[1]:
            return
        if opcode in ENTRY_REPLIES:
            a, b = wire.entry_nodeid(recorded), wire.entry_nodeid(live)
            if a and b:
                self.nodes[a] = b
        elif opcode == Opcode.READDIRPLUS:
            by_name = {name: node for node, name in wire.direntplus_nodeids(live)}
            for node, name in wire.direntplus_nodeids(recorded):
                if name in by_name:
                    self.nodes[node] = by_name[name]
        if opcode in OPEN_REPLIES:
            a2, b2 = wire.open_out(opcode, recorded), wire.open_out(opcode, live)
            if a2 is not None and b2 is not None:
                self.fhs[a2[0]] = b2[0]

    def _ended(self, opcode: int) -> Outcome:
        """The connection closed: how the process ended (it is given GRACE to), blamed on
        the oldest request still waiting for its reply (the server died before answering
        it, whatever was sent after), else on `opcode`."""
        assert self.server is not None
        if self.waiting:
            opcode = next(iter(self.waiting.values()))[0]
        proc = self.server.proc
        if proc is not None:
            try:
                proc.wait(GRACE)
            except subprocess.TimeoutExpired:
                pass
        got = ended(proc.returncode if proc is not None else None, opcode)
        return got or Outcome(Verdict.EXITED, opcode, detail="it closed its connection")

    def p99(self) -> float:
        """The 99th percentile of the last 5000 reply latencies (0 before any); worked out
        on every call for the first 256 replies, then every 256 replies."""
        n = len(self.latencies)
        if n and (n < 256 or n - self._p99_n >= 256):
            if n > 10000:
                del self.latencies[:-5000]
                n = len(self.latencies)
            ordered = sorted(self.latencies[-5000:])
            self._p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            self._p99_n = n
        return self._p99
