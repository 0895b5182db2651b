"""Which request a /dev/fuse ioctl belongs to, on either side of a replay.

The server makes BACKING_OPEN while handling an OPEN and BACKING_CLOSE while handling a
RELEASE, and the ioctl always completes before that request's reply is sent (the server
thread waits for it). So an ioctl belongs to a request that was outstanding when it was
made, and, among those, to the one answered first afterwards, preferring a request
whose opcode makes such ioctls (a BACKING_CLOSE made while a RELEASE and a LOOKUP are
outstanding belongs to the RELEASE). With nothing outstanding (a server closing a backing id on
FORGET, which gets no reply) it belongs to the last request sent.

The recording and the replay are attributed by this same rule, so their ioctls can be
compared request by request, whatever else ran concurrently in the recorded session.
"""

from __future__ import annotations

from dataclasses import dataclass

from dissectors.constants import Opcode
from dissectors.ioctls import DevIoctl

_OPENS = frozenset({Opcode.OPEN, Opcode.CREATE, Opcode.TMPFILE, Opcode.OPENDIR})
_CLOSES = frozenset({Opcode.RELEASE, Opcode.RELEASEDIR, Opcode.FORGET, Opcode.BATCH_FORGET,
                     Opcode.DESTROY})
#: The opcodes whose handling makes an ioctl, most likely first (a server closes a backing
#: id on RELEASE, and sometimes when an OPEN fails after registering one).
LIKELY: dict[int, tuple[frozenset[int], ...]] = {
    DevIoctl.BACKING_OPEN: (_OPENS,),
    DevIoctl.PASSTHROUGH_OPEN_V1: (_OPENS,),
    DevIoctl.PASSTHROUGH_OPEN_V2: (_OPENS,),
    DevIoctl.BACKING_CLOSE: (_CLOSES, _OPENS),
}


@dataclass
class _Pending:
    token: int
    candidates: list[int]  # uniques


class Attributor:
    """Feed the conversation in order; attributions come out as replies arrive.

    `owned[unique]` lists the ioctls (tokens, in the order made) that belong to a request;
    `owned[None]` those made before the first request."""

    def __init__(self) -> None:
        self.outstanding: dict[int, int] = {}  # unique → opcode, oldest first
        self.last: int | None = None
        self.pending: list[_Pending] = []
        self.owned: dict[int | None, list[int]] = {}

    def _own(self, token: int, unique: int | None) -> None:
        self.owned.setdefault(unique, []).append(token)

    def request(self, unique: int, opcode: int, awaits_reply: bool) -> None:
        self.last = unique
        if awaits_reply:
            self.outstanding[unique] = opcode

    def ioctl(self, token: int, cmd: int) -> None:
        if not self.outstanding:
            self._own(token, self.last)
            return
        candidates = list(self.outstanding)
        for opcodes in LIKELY.get(cmd, ()):
            preferred = [u for u, op in self.outstanding.items() if op in opcodes]
            if preferred:
                candidates = preferred
                break
        self.pending.append(_Pending(token, candidates))

    def reply(self, unique: int) -> None:
        if self.outstanding.pop(unique, None) is None:
            return
        keep = []
        for item in self.pending:
            if unique in item.candidates:
                self._own(item.token, unique)
            else:
                keep.append(item)
        self.pending = keep

    def finish(self) -> None:
        """Requests never answered: their ioctls go to the oldest candidate."""
        for item in self.pending:
            self._own(item.token, item.candidates[0])
        self.pending = []
