"""Translating the values a server chooses between the recording and the replay.

A node id, file handle or backing id means something only in its own session: the
replayed server may pick different numbers for the same things. Each reply teaches a
pair (recorded value → replayed value); later requests are rewritten through it (a
LOOKUP reply's nodeid → the nodeid of later GETATTRs, an OPEN reply's fh → READ and
RELEASE). A translation must stay one-to-one while the value is in use: a replayed file
handle that already stands for another recorded handle still open (a reused fh), or a
recorded node id that now maps to a second value, is a difference in its own right.

"In use" follows the protocol's lifecycles: node ids count lookups (entry replies, one
per READDIRPLUS entry) down to FORGET/BATCH_FORGET; file handles live from the open reply
to RELEASE/RELEASEDIR; backing ids from BACKING_OPEN to BACKING_CLOSE. A value that went
out of use may be handed out again for something else.
"""

from __future__ import annotations

from dissectors.constants import FUSE_ROOT_ID

from .views import BACKING, DIROFF, FH, NODE, RequestView


class Table:
    """Recorded → replayed values of one kind, and which recorded values are in use."""

    def __init__(self, what: str, fixed: tuple[int, ...] = ()) -> None:
        self.what = what
        self.fixed = frozenset(fixed)
        self.forward: dict[int, int] = {v: v for v in fixed}
        self.backward: dict[int, int] = {v: v for v in fixed}
        self.refs: dict[int, int] = {}
        #: recorded values `learn` unbound because the replayed server broke the one-to-one
        #: rule (collected and cleared by the replay, which notes which reply did it)
        self.displaced: list[int] = []

    def rewrite(self, recorded: int) -> int:
        """The replayed value for a recorded one (itself when never learned)."""
        return self.forward.get(recorded, recorded)

    def learn(self, recorded: int, replayed: int, refs: int = 1) -> str | None:
        """Note the pair; returns why it breaks the one-to-one rule, or None. The newest
        pair wins either way, so later requests follow what the server now says."""
        if recorded in self.fixed or replayed in self.fixed:
            if recorded == replayed:
                return None
            return f"{self.what} {replayed} where the recording has {recorded}"
        problem = None
        before = self.forward.get(recorded)
        if before is not None and before != replayed:
            problem = (f"recorded {self.what} {recorded} is {before} in this replay and still "
                       f"in use, but now comes back as {replayed}")
            self._unbind(recorded)
            self.displaced.append(recorded)
        other = self.backward.get(replayed)
        if problem is None and other is not None and other != recorded:
            problem = (f"{self.what} {replayed} is handed out again while it still stands for "
                       f"recorded {self.what} {other}")
        if other is not None and other != recorded:
            self._unbind(other)
            self.displaced.append(other)
        self.forward[recorded] = replayed
        self.backward[replayed] = recorded
        self.refs[recorded] = self.refs.get(recorded, 0) + refs
        return problem

    def release(self, recorded: int, count: int = 1) -> None:
        """The recorded value's end (or `count` of its references): at zero both directions
        are unbound, so a stale pair can never be mistaken for a live one."""
        if recorded in self.fixed or recorded not in self.refs:
            return
        self.refs[recorded] -= count
        if self.refs[recorded] <= 0:
            self._unbind(recorded)

    def _unbind(self, recorded: int) -> None:
        replayed = self.forward.pop(recorded, None)
        if replayed is not None and self.backward.get(replayed) == recorded:
            del self.backward[replayed]
        self.refs.pop(recorded, None)


class Translator:
    """The translation tables of one replay."""

    def __init__(self) -> None:
        self.nodes = Table("node id", fixed=(0, FUSE_ROOT_ID))  # 0: negative entry
        self.fhs = Table("file handle")
        self.backing = Table("backing id", fixed=(0,))  # 0: no passthrough
        self.closed_backing: dict[int, int] = {}  # recorded → replayed, of ids since closed
        self.diroffs: dict[int, dict[int, int]] = {}  # recorded dir fh → {recorded off: off}
        #: recorded dir fh → (replayed entries listed so far, the furthest one's (rank, off))
        self.listed: dict[int, tuple[int, tuple[int, int]]] = {}

    def rewrite(self, view: RequestView) -> list[tuple[int, int]]:
        """(offset, replayed value) for every server-chosen value in a recorded request."""
        changes: list[tuple[int, int]] = []
        fh = next((value for _, kind, value in view.slots if kind == FH), 0)
        for offset, kind, value in view.slots:
            if kind == NODE:
                new = self.nodes.rewrite(value)
            elif kind == FH:
                new = self.fhs.rewrite(value)
            elif kind == DIROFF:
                new = self.diroffs.get(fh, {}).get(value, value)
            else:
                continue
            if new != value:
                changes.append((offset, new))
        for offset, nodeid, _ in view.forgets:
            new = self.nodes.rewrite(nodeid)
            if new != nodeid:
                changes.append((offset, new))
        return changes

    def learn(self, kind: int, recorded: int, replayed: int, dir_fh: int = 0) -> str | None:
        """A server-chosen value seen in a reply; returns a problem, or None."""
        if kind == NODE:
            if recorded == 0 or replayed == 0:  # a negative entry: nothing to learn
                return None if recorded == replayed else (
                    f"node id {replayed} where the recording has {recorded}")
            return self.nodes.learn(recorded, replayed)
        if kind == FH:
            return self.fhs.learn(recorded, replayed)
        if kind == DIROFF:
            self.diroffs.setdefault(dir_fh, {})[recorded] = replayed
            return None
        if kind == BACKING:
            return self.check_backing(recorded, replayed)
        return None

    def learn_listing(self, dir_fh: int, pairs: list[tuple[int, int, int]], listed: int) -> None:
        """A listing whose entries were paired by name: (recorded off, replayed position,
        replayed off) of each pair in recorded order, `listed` the replayed entries.

        A recorded offset means "after every entry listed up to this one"; its replayed
        counterpart is the offset of whichever of those entries the replayed server listed
        last, so a continuation goes on after the same entries (in another order, the
        offset of the same-named entry would list some of them again)."""
        base, furthest = self.listed.get(dir_fh, (0, (-1, 0)))
        offsets = self.diroffs.setdefault(dir_fh, {})
        for recorded, position, replayed in pairs:
            furthest = max(furthest, (base + position, replayed))
            offsets[recorded] = furthest[1]
        self.listed[dir_fh] = (base + listed, furthest)

    def check_backing(self, recorded: int, replayed: int) -> str | None:
        """An open reply's backing id: it must be the one the server got from the
        (emulated) BACKING_OPEN that matches the recorded one."""
        if self.backing.forward.get(recorded, self.closed_backing.get(recorded)) == replayed:
            return None  # the same id, open (or closed on both sides alike)
        if replayed != 0 and replayed not in self.backing.backward:
            return f"backing id {replayed} is not open (no BACKING_OPEN gave it, or it was closed)"
        if recorded in self.backing.forward:
            return (f"backing id {replayed} where the recording's {recorded} corresponds to "
                    f"{self.backing.forward[recorded]} in this replay")
        return f"backing id {replayed} where the recording has {recorded}"

    def forgotten(self, view: RequestView) -> None:
        """FORGET / BATCH_FORGET sent: the lookups they drop."""
        if view.forgets:
            for _, nodeid, nlookup in view.forgets:
                self.nodes.release(nodeid, nlookup)
        else:
            self.nodes.release(view.brief.nodeid, view.brief.get("nlookup") or 0)

    def released(self, view: RequestView) -> None:
        """RELEASE / RELEASEDIR sent: the file handle, and a directory's offsets, go out
        of use."""
        fh = view.brief.get("fh") or 0
        self.fhs.release(fh)
        self.diroffs.pop(fh, None)
        self.listed.pop(fh, None)

    def backing_closed(self, recorded: int) -> int | None:
        """A recorded BACKING_CLOSE that succeeded: the replayed id it stood for."""
        replayed = self.backing.forward.get(recorded)
        if replayed is not None:
            self.closed_backing[recorded] = replayed
        self.backing.release(recorded)
        return replayed
