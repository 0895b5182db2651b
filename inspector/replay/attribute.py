"""Which request a /dev/fuse ioctl belongs to, on either side of a replay.

The server makes BACKING_OPEN while handling an OPEN and BACKING_CLOSE while handling a
RELEASE, and the ioctl always completes before that request's reply is sent (the server
thread waits for it). So an ioctl belongs to a request that was outstanding when it was
made, and, among those, to the one answered first afterwards, preferring a request
whose opcode makes such ioctls (a BACKING_CLOSE made while a RELEASE and a LOOKUP are
outstanding belongs to the RELEASE). With nothing outstanding (a server closing a backing id on
FORGET, which gets no reply) it belongs to the last request sent.

Backing ids settle the rest. A multi-threaded server may handle two RELEASEs at once,
and the first answered need not be the one whose close came first: a BACKING_CLOSE of id
N goes to the outstanding RELEASE of a handle whose open reply carried N, and a
BACKING_OPEN that returned N is never given to an OPEN whose reply carries another id.

The recording and the replay are attributed by this same rule, so their ioctls can be
compared request by request, whatever else ran concurrently in the recorded session.
"""

from __future__ import annotations

from dataclasses import dataclass

from dissectors.constants import Opcode
from dissectors.ioctls import FD_ARGS, DevIoctl, ioctl_arg_fields
from dissectors.opcodes import FORGETS, OPEN_REPLIES, RELEASES
from dissectors.quick import peek_reply

from ..lifecycles.wire import open_out, request_fhs

_OPENS = OPEN_REPLIES
_CLOSES = RELEASES | FORGETS | {Opcode.DESTROY}
#: The opcodes whose handling makes an ioctl, most likely first (a server closes a backing
#: id on RELEASE, and sometimes when an OPEN fails after registering one).
LIKELY: dict[int, tuple[frozenset[int], ...]] = {
    DevIoctl.BACKING_OPEN: (_OPENS,),
    DevIoctl.PASSTHROUGH_OPEN_V1: (_OPENS,),
    DevIoctl.PASSTHROUGH_OPEN_V2: (_OPENS,),
    DevIoctl.BACKING_CLOSE: (_CLOSES, _OPENS),
}


_ID_RETURNED = frozenset(FD_ARGS)  # an ioctl that hands over a file returns its id


def ioctl_backing_id(cmd: int, arg: bytes, result: int) -> int | None:
    """The backing id an ioctl registered (its result) or closed (its argument)."""
    if cmd in _ID_RETURNED:
        return result if result > 0 else None
    if cmd == DevIoctl.BACKING_CLOSE:
        return ioctl_arg_fields(cmd, arg).get("backing_id")
    return None


@dataclass
class _Pending:
    token: int
    candidates: list[int]  # uniques
    backing_id: int | None = None


class Attributor:
    """Feed the conversation in order; attributions come out as replies arrive.

    `owned[unique]` lists the ioctls (tokens, in the order made) that belong to a request;
    `owned[None]` those made before the first request."""

    def __init__(self) -> None:
        self.outstanding: dict[int, int] = {}  # unique → opcode, oldest first
        self.last: int | None = None
        self.pending: list[_Pending] = []
        self.owned: dict[int | None, list[int]] = {}
        self._fh_ids: dict[int, int] = {}  # open handle → backing id its open reply carried
        self._carries: dict[int, int] = {}  # unique → backing id a request is known to carry

    def _own(self, token: int, unique: int | None) -> None:
        self.owned.setdefault(unique, []).append(token)

    def request(self, unique: int, opcode: int, awaits_reply: bool, raw: bytes = b"") -> None:
        self.last = unique
        if awaits_reply:
            self.outstanding[unique] = opcode
        if opcode in RELEASES:
            for fh in request_fhs(opcode, raw):
                backing_id = self._fh_ids.pop(fh, None)
                if backing_id is not None and awaits_reply:
                    self._carries[unique] = backing_id

    def ioctl(self, token: int, cmd: int, backing_id: int | None = None) -> None:
        if not self.outstanding:
            self._own(token, self.last)
            return
        candidates = list(self.outstanding)
        for opcodes in LIKELY.get(cmd, ()):
            preferred = [u for u, op in self.outstanding.items() if op in opcodes]
            if preferred:
                candidates = preferred
                break
        known = ([u for u in candidates if self._carries.get(u) == backing_id]
                 if backing_id is not None else [])
        self.pending.append(_Pending(token, known or candidates, backing_id))

    def reply(self, unique: int, raw: bytes = b"") -> None:
        opcode = self.outstanding.pop(unique, None)
        if opcode is None:
            return
        carried = self._carries.pop(unique, None)
        if opcode in _OPENS and peek_reply(raw)[0] == 0:  # a successful open
            out = open_out(opcode, raw)
            if out is not None and out[2]:
                self._fh_ids[out[0]] = carried = out[2]
            elif out is not None:
                carried = 0  # it carries none: a BACKING_OPEN that gave an id is another's
        keep = []
        for item in self.pending:
            if unique not in item.candidates:
                keep.append(item)
            elif (carried is None or item.backing_id is None or carried == item.backing_id
                  or len(item.candidates) == 1):
                self._own(item.token, unique)
            else:  # this request carries another id: the ioctl is one still outstanding's
                item.candidates.remove(unique)
                keep.append(item)
        self.pending = keep

    def finish(self) -> None:
        """Requests never answered: their ioctls go to the oldest candidate."""
        for item in self.pending:
            self._own(item.token, item.candidates[0])
        self.pending = []
