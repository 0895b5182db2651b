"""Random access to a trace: a packed row per record, cached beside the trace.

Each row holds what a list view shows without decoding: offset, ts, kind, opcode,
unique, nodeid, error. For a reply, `opcode` is the opcode of the request it answers
(paired by `unique` while building; 0 if unknown) and `error` its error; for a
notification (unique 0) `error` is the notify code. IOCTL and EVENT rows carry only
offset, ts and kind: read them with `record(i)`.

The cache (`<trace>.idx`, else under `~/.cache/fusetrace/`) stores the trace size and
mtime it was built from plus a digest of the header and the last indexed bytes: it is
used as is when they match, extended from the last indexed record when the trace only
grew, and rebuilt otherwise. A broken cache is rebuilt silently; the trace is the truth.
A trace a native appender is still writing fills space it allocated ahead without
growing (see `stream.py`), so while its writer holds it, it is rescanned from the last
indexed record whatever its size says. Spans skipped as holes are kept in `holes`.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from dissectors.constants import NO_REPLY_OPCODES
from dissectors.quick import peek_reply, peek_request

from . import native
from .errors import TraceReadError
from .records import REPLY, REQUEST, TS_LIMIT, Kind, Record, cut_note, decode, problem
from .opening import open_trace
from .stream import LIMITS, Hole, Progress, Scan, TraceFile, gc_paused

CACHE_MAGIC = "fusetrace-index"
CACHE_VERSION = 3  # 2: records checked field by field; 3: holes
_ANCHOR_SPAN = 4096
_COLUMNS = {"offset": "Q", "ts": "q", "kind": "B", "opcode": "I", "unique": "Q",
            "nodeid": "Q", "error": "i"}
_ROW_BYTES = sum(array.array(code).itemsize for code in _COLUMNS.values())
_HEAD_LEN = struct.Struct("<I")
_NO_REPLY = frozenset(int(op) for op in NO_REPLY_OPCODES)


class Row(NamedTuple):
    """One record's columns (`kind` as a plain int, like the other columns)."""

    offset: int
    ts: int
    kind: int
    opcode: int
    unique: int
    nodeid: int
    error: int


def cache_home() -> Path:
    """Where caches go when the trace's own directory is not writable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusetrace"


class TraceIndex:
    """Rows of one trace; `source` says whether this open used the cache, extended or built it.

    One thread may `refresh()` while others read: the `error` column is appended last, so
    `len()` never counts a half-added row.
    """

    def __init__(self, trace: TraceFile, cache_paths: list[Path]) -> None:
        self._file = trace
        self._cache_paths = cache_paths
        self.path = trace.path
        self.header: dict[str, Any] = trace.header
        self.tail: str | None = None
        self.holes: list[Hole] = []  # spans skipped: see `stream.py`
        self.source = "built"
        self.cache_path: Path | None = None
        self._cols = {name: array.array(code) for name, code in _COLUMNS.items()}
        self._pending: dict[int, int] = {}  # unique → opcode of requests not yet answered
        self._end = trace.start  # just past the last indexed record
        self._size = 0  # trace size when last scanned
        self._mtime = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], progress: Progress | None = None, *,
             cache_dir: str | os.PathLike[str] | None = None) -> TraceIndex:
        """Index `path`, from its cache when that is still valid; progress(done, total bytes)."""
        trace = open_trace(path)
        try:
            real = os.path.realpath(trace.path)
            fallback = Path(cache_dir) if cache_dir is not None else cache_home()
            key = hashlib.sha256(real.encode()).hexdigest()[:16]
            elsewhere = fallback / f"{key}-{os.path.basename(real)}.idx"
            idx = cls(trace, [Path(real + ".idx"), elsewhere])
            idx._load_or_build(progress)
            return idx
        except BaseException:
            trace.close()
            raise

    def __enter__(self) -> TraceIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    # --- access ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cols["error"])

    def _pos(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range ({n} records)")
        return i

    def record(self, i: int) -> Record:
        """The i-th record, read with one pread."""
        i = self._pos(i)
        offsets = self._cols["offset"]
        start = offsets[i]
        end = offsets[i + 1] if i + 1 < len(offsets) else self._end
        k = bisect.bisect_left(self.holes, (start, start))
        if k < len(self.holes) and self.holes[k][0] < end:
            end = self.holes[k][0]  # the record ends where the hole after it starts
        data = self._file.pread(end - start, start)
        try:
            obj = msgpack.unpackb(data, raw=False, **LIMITS)
            if self._file.upgrade is not None:
                obj = self._file.upgrade(obj)
        except Exception as exc:
            raise TraceReadError(f"{self.path}: record {i} at byte {start} is unreadable "
                                 f"(trace changed since it was indexed?): {exc}") from None
        if problem(obj) is not None:
            raise TraceReadError(
                f"{self.path}: record {i} at byte {start} changed since it was indexed")
        return decode(obj, i, start)

    def row(self, i: int) -> Row:
        i = self._pos(i)
        c = self._cols
        return Row(c["offset"][i], c["ts"][i], c["kind"][i], c["opcode"][i], c["unique"][i],
                   c["nodeid"][i], c["error"][i])

    def offset(self, i: int) -> int:
        return self._cols["offset"][i]

    def ts(self, i: int) -> int:
        return self._cols["ts"][i]

    def kind(self, i: int) -> Kind:
        return Kind(self._cols["kind"][i])

    def opcode(self, i: int) -> int:
        return self._cols["opcode"][i]

    def unique(self, i: int) -> int:
        return self._cols["unique"][i]

    def nodeid(self, i: int) -> int:
        return self._cols["nodeid"][i]

    def error(self, i: int) -> int:
        return self._cols["error"][i]

    def column(self, name: str, start: int = 0, stop: int | None = None) -> array.array[int]:
        """A copy of one column's slice, for scans and filters over many rows."""
        return self._cols[name][start:stop]

    # --- building -------------------------------------------------------------------

    def refresh(self) -> int:
        """Index records appended since the last scan; returns how many were added."""
        st = self._file.stat()
        if st.st_size < self._size and len(self._file.pread(1, self._end - 1)) != 1:
            raise TraceReadError(f"{self.path}: trace shrank from {self._size} to "
                                 f"{st.st_size} bytes since it was indexed; reopen it")
        if st.st_size == self._size and not self._file.writer_alive():
            return 0
        before = len(self)
        self._scan(st, None)
        return len(self) - before

    def _scan(self, st: os.stat_result, progress: Progress | None) -> None:
        """Add rows from `_end` to the end of file, pairing replies with requests.

        Plain REQUEST and REPLY records (no meta but a true length) take the C loop (`_scan.c`) when it is
        built, else `_add`; both check them with exactly the rules of `problem()`, which
        judges every other record.
        """
        self._size, self._mtime = st.st_size, st.st_mtime_ns
        self.tail = None
        scan = Scan(self._file, self._end, chunk=1 << 20, progress=progress)
        with gc_paused():  # a batch is thousands of fresh lists: collections free nothing
            self._rows(scan)
        self.holes.extend(scan.holes)

    def _rows(self, scan: Scan) -> None:
        c, pending, ts_limit, fast = self._cols, self._pending, TS_LIMIT, native.rows
        columns = list(c.values())  # `error` last: len() counts whole rows only
        offset = scan.start
        for objs, ends in scan.batches():
            offset = scan.batch_start  # past a hole, if one lies before this batch
            k, n = 0, len(objs)
            while k < n:
                if fast is not None:
                    k, offset, data = fast(objs, ends, k, offset, ts_limit, pending, _NO_REPLY)
                    for col, part in zip(columns, data):
                        col.frombytes(part)
                    if k == n:
                        break
                why = self._add(objs[k], offset)
                if why is not None:
                    self.tail = cut_note(offset, len(c["offset"]), f"bad record: {why}")
                    self._end = offset
                    return
                offset = ends[k]
                k += 1
        self._end = offset
        if scan.stop is not None:
            self.tail = cut_note(offset, len(c["offset"]), scan.stop)

    def _add(self, obj: Any, offset: int) -> str | None:
        """One record's row; why it is no record, or None."""
        c = self._cols
        if not (type(obj) is list and len(obj) == 3
                and type(raw := obj[2]) is bytes and type(kind := obj[0]) is int
                and (kind == REQUEST or kind == REPLY)
                and type(ts := obj[1]) is int and 0 <= ts < TS_LIMIT):
            why = problem(obj)
            if why is not None:
                return why
            kind, ts, raw = obj[0], obj[1], obj[2]
        opcode = unique = nodeid = error = 0
        if kind == REQUEST:
            opcode, unique, nodeid = peek_request(raw)
            if unique and opcode not in _NO_REPLY:
                self._pending[unique] = opcode
        elif kind == REPLY:
            error, unique = peek_reply(raw)
            opcode = self._pending.pop(unique, 0) if unique else 0
        # an IOCTL or EVENT: no message columns
        for name, value in (("offset", offset), ("ts", ts), ("kind", kind), ("opcode", opcode),
                            ("unique", unique), ("nodeid", nodeid), ("error", error)):
            c[name].append(value)
        return None

    def _anchor(self, end: int) -> bytes:
        """Digest of the header and the bytes before `end`: a cheap "same trace" check."""
        start = self._file.start
        low = max(start, end - _ANCHOR_SPAN)
        data = self._file.pread(start, 0) + self._file.pread(end - low, low)
        return hashlib.blake2b(data, digest_size=16).digest()

    # --- cache ----------------------------------------------------------------------

    def _load_or_build(self, progress: Progress | None) -> None:
        st = self._file.stat()
        grown: tuple[Path, dict[str, Any]] | None = None
        for path in self._cache_paths:
            head = self._cache_head(path)
            if head is None:
                continue
            if head["size"] == st.st_size and head["mtime"] == st.st_mtime_ns:
                if self._adopt(path, head):
                    self.source, self.cache_path = "cache", path
                    if self._file.writer_alive():  # it may have filled what it allocated
                        self._scan(st, progress)
                    return
            elif grown is None and head["size"] < st.st_size:
                grown = path, head
        if grown is not None and self._adopt(*grown):
            self.source = "extended"
        self._scan(st, progress)
        self.cache_path = self._save()

    def _cache_head(self, path: Path) -> dict[str, Any] | None:
        """The head of a cache that belongs to this trace, or None."""
        try:
            with open(path, "rb") as f:
                (size,) = _HEAD_LEN.unpack(f.read(_HEAD_LEN.size))
                head = msgpack.unpackb(f.read(size), raw=False) if size < 1 << 20 else None
                total = os.fstat(f.fileno()).st_size
            ok = (type(head) is dict and head.get("magic") == CACHE_MAGIC
                  and head["version"] == CACHE_VERSION and head["byteorder"] == sys.byteorder
                  and head["start"] == self._file.start
                  and total == _HEAD_LEN.size + size + head["rows"] * _ROW_BYTES)
            if not ok:
                return None
            head["data_at"] = _HEAD_LEN.size + size
            return head if self._anchor(head["end"]) == head["anchor"] else None
        except Exception:  # missing, unreadable or not ours: build instead
            return None

    def _adopt(self, path: Path, head: dict[str, Any]) -> bool:
        """Load the cached rows; False (and nothing loaded) if the file let us down."""
        try:
            with open(path, "rb") as f:
                f.seek(head["data_at"])
                for col in self._cols.values():
                    col.fromfile(f, head["rows"])
            uniques, opcodes = array.array("Q"), array.array("I")
            uniques.frombytes(head["pending"][0])
            opcodes.frombytes(head["pending"][1])
        except (OSError, EOFError, ValueError):
            for col in self._cols.values():
                del col[:]
            return False
        self._pending = dict(zip(uniques, opcodes))
        self._end, self._size, self._mtime = head["end"], head["size"], head["mtime"]
        self.tail = head["tail"]
        self.holes = [(start, end) for start, end in head["holes"]]
        return True

    def _save(self) -> Path | None:
        """Write the cache beside the trace, else in the cache home; None if neither works."""
        head = msgpack.packb({
            "magic": CACHE_MAGIC, "version": CACHE_VERSION, "byteorder": sys.byteorder,
            "size": self._size, "mtime": self._mtime, "start": self._file.start,
            "end": self._end, "rows": len(self), "tail": self.tail,
            "holes": [list(hole) for hole in self.holes],
            "anchor": self._anchor(self._end),
            "pending": [array.array("Q", self._pending.keys()).tobytes(),
                        array.array("I", self._pending.values()).tobytes()],
        }, use_bin_type=True)
        for path in self._cache_paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(_HEAD_LEN.pack(len(head)) + head)
                        for col in self._cols.values():
                            col.tofile(f)
                    os.replace(tmp, path)
                except BaseException:
                    os.unlink(tmp)
                    raise
                return path
            except OSError:
                continue
        return None
