"""Columns derived from a `TraceIndex` without decoding: request ↔ reply pairing, latency,
and (read on demand) the pid of each request and the name of each ioctl.

The filter language and the TUI both need "the other half of this exchange" and "how long
it took" for any record among millions; one pass over the index's `kind`/`unique` columns
gives a partner array, extended as a live trace grows. Caveat: a reply to a request the
trace does not hold (recorded mid-session, or a cut trace) has no partner and no latency.
"""

from __future__ import annotations

import array
import threading
from typing import Callable

from dissectors.context import Dialect
from dissectors.ioctls import ioctl_name
from dissectors.offsets import reader
from dissectors.opcodes import UNPAIRED
from dissectors.structs import FuseInHeader
from traces import TraceIndex, TraceReader
from traces.records import IOCTL, REPLY, REQUEST

_NO_REPLY = frozenset(int(op) for op in UNPAIRED)
_PID = reader(FuseInHeader, "pid")


class Exchanges:
    """Partner of every record (the reply of a request, the request of a reply, else -1).

    `update()` pairs the rows added to the index since the last call; it is cheap when
    nothing was added. Other threads may read `partner` while one thread updates.
    """

    def __init__(self, idx: TraceIndex) -> None:
        self.idx = idx
        self.partner = array.array("q")
        self._waiting: dict[int, int] = {}  # unique → row of a request not yet answered
        self._lock = threading.Lock()
        self._pids: array.array[int] | None = None
        self._ioctls: dict[int, str] = {}
        self._ioctls_upto = 0  # rows whose ioctl names are known

    def __len__(self) -> int:
        return len(self.partner)

    def update(self) -> int:
        """Pair rows the index gained; returns how many rows were added."""
        with self._lock:
            idx, start = self.idx, len(self.partner)
            stop = len(idx)
            if stop <= start:
                return 0
            kinds = idx.column("kind", start, stop)
            uniques = idx.column("unique", start, stop)
            opcodes = idx.column("opcode", start, stop)
            partner, waiting, no_reply = self.partner, self._waiting, _NO_REPLY
            append = partner.append
            for i, kind, unique, opcode in zip(range(start, stop), kinds, uniques, opcodes):
                if kind == REPLY and unique:
                    j = waiting.pop(unique, -1)
                    append(j)
                    if j >= 0:
                        partner[j] = i
                else:
                    if kind == REQUEST and unique and opcode not in no_reply:
                        waiting[unique] = i
                    append(-1)
            return stop - start

    def of(self, i: int) -> int:
        """The other half of record i's exchange, or -1."""
        return self.partner[i] if i < len(self.partner) else -1

    def latency(self, i: int) -> int | None:
        """ns between a request and its reply, for either of the two; None if unpaired."""
        j = self.of(i)
        if j < 0:
            return None
        return abs(self.idx.ts(i) - self.idx.ts(j))

    def latencies(self, start: int = 0, stop: int | None = None) -> array.array[int]:
        """Latency of each record in [start, stop) in ns, -1 where there is none."""
        stop = len(self.partner) if stop is None else min(stop, len(self.partner))
        ts = self.idx.column("ts", 0, stop)
        partner = self.partner
        return array.array("q", (abs(ts[i] - ts[j]) if (j := partner[i]) >= 0 else -1
                                 for i in range(start, stop)))

    def pids(self, progress: Callable[[int, int], None] | None = None) -> array.array[int]:
        """The calling pid of every request (from its header) and ioctl (from the recorder's
        notes), 0 for the rest. Reads the whole trace once, then keeps the column."""
        n = len(self.partner)
        if self._pids is not None and len(self._pids) >= n:
            return self._pids
        out = array.array("q")
        with TraceReader(self.idx.path) as reader:
            for obj in reader.arrays(progress):
                if len(out) >= n:
                    break
                kind = obj[0]
                if kind == REQUEST and len(obj[2]) >= _PID.size:
                    out.append(_PID.unpack_from(obj[2])[0])
                elif kind == IOCTL:
                    pid = obj[2].get("pid")
                    out.append(pid if type(pid) is int else 0)
                else:
                    out.append(0)
        out.extend([0] * (n - len(out)))  # the trace shrank under us: nothing more to know
        self._pids = out
        return out

    def ioctl_names(self, dialect: Dialect) -> dict[int, str]:
        """Short names (`BACKING_OPEN`, ...) of the ioctl records, by record number."""
        start, stop = self._ioctls_upto, len(self.partner)
        kinds = self.idx.column("kind", start, stop)
        i = -1
        while True:
            try:
                i = kinds.index(IOCTL, i + 1)
            except ValueError:
                break
            cmd = self.idx.record(start + i).meta.get("cmd", 0)
            self._ioctls[start + i] = ioctl_name(cmd, dialect).removeprefix("FUSE_DEV_IOC_")
        self._ioctls_upto = stop
        return self._ioctls
