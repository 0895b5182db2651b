"""The order a replay sends requests in: the recording's, held to what each request depends on.

A request may depend on two kinds of earlier events, both read from the recording:

- **the ids it names** (node ids, file handles, directory offsets; which fields carry
  them, and when, is `dissectors.ids`, through `views.request_view`): the reply that
  handed each one out must be back, and compared, before the request goes out, so the
  replay's translation knows the replayed value. The kernel could not have sent the
  request earlier either.
- **the release that freed an id its recorded reply reuses**: a server that hands out
  small integers (go-fuse) or memory addresses reuses an fh (or node id) as soon as a
  RELEASE/RELEASEDIR (FORGET) freed it, and in the recording that release may have been
  sent *after* the request whose reply reused it (two kernel threads at once: CREATE
  sent, RELEASEDIR sent, RELEASEDIR answered, CREATE answered with the freed fh). Such a
  request is held until the release's reply is back (or, for FORGET, which gets none,
  until it is sent), so the replayed server has the id free again when it answers.

`plan` works these out once, before anything runs, and gives the replay its send order
(`order`, the recorded order with each held request moved to just after what it waits
for) and the steps of an `--overlap` replay likewise. Every request's dependencies come
before its own recorded reply, so the rules can never wait in a circle.

It also decodes every recorded message once (the request's server-chosen slots, the
reply's fast decode), which the comparison then uses as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, TypeVar

from dissectors import SessionDecoder
from dissectors.constants import Opcode
from dissectors.quick import Brief

from .script import EXPECT, SEND, Exchange, Script
from .views import FH, NODE, RequestView, layer_spec, reply_view, request_view

_RELEASES = frozenset({int(Opcode.RELEASE), int(Opcode.RELEASEDIR)})
_FORGETS = frozenset({int(Opcode.FORGET), int(Opcode.BATCH_FORGET)})
_LISTINGS = frozenset({int(Opcode.READDIR), int(Opcode.READDIRPLUS)})
_READDIRPLUS = int(Opcode.READDIRPLUS)
_NOT_LINKED = (b".", b"..")  # READDIRPLUS entries the kernel takes no reference on
#: (kind, recorded value) of an id: NODE or FH
IdKey = tuple[int, int]
T = TypeVar("T")


@dataclass
class Plan:
    """What `plan` works out from a script."""

    order: list[Exchange]  # requests in send order
    steps: list[tuple[int, Exchange]]  # SEND/EXPECT, for `overlap`
    by_unique: dict[int, Exchange]
    decoder: SessionDecoder  # the recorded session's, after its last message
    #: unique → {(kind, recorded value): unique of the exchange whose reply handed it out}
    producers: dict[int, dict[IdKey, int]] = field(default_factory=dict)
    #: unique → uniques whose replies must be back first (producers and freeing releases)
    needs: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: unique → uniques that must have been sent first (a FORGET that freed a reused node id)
    needs_sent: dict[int, tuple[int, ...]] = field(default_factory=dict)
    held: int = 0  # requests moved after a release sent later in the recording


def handed_out(opcode: int, raw: bytes, brief: Brief, true_len: int | None = None) -> list[IdKey]:
    """(kind, value) of the node ids and file handles a successful reply hands out, one per
    reference the kernel takes (READDIRPLUS: each entry but '.' and '..'; 0 is none)."""
    if brief.error:
        return []
    out: list[IdKey] = []
    for comp, values in brief.layers:
        spec = layer_spec(comp)
        if not spec.special:
            continue
        kinds = spec.kinds_for(opcode, values)
        for i in spec.special:
            if kinds[i] == FH or (kinds[i] == NODE and values[i]):
                out.append((kinds[i], values[i]))
    if opcode == _READDIRPLUS:
        tail = reply_view(raw, brief, true_len).tail
        name_of = {path.rsplit(".", 1)[0]: value for path, value, _, _ in tail
                   if path.endswith(".name")}
        for path, value, kind, _ in tail:
            if kind == NODE and value and name_of.get(path.split(".", 1)[0]) not in _NOT_LINKED:
                out.append((NODE, value))
    return out


def named(view: RequestView) -> list[tuple[int, int, int]]:
    """(offset, kind, recorded value) of every node id and file handle a request names."""
    out = [slot for slot in view.slots if slot[1] == NODE or slot[1] == FH]
    if view.forgets:
        out += [(at, NODE, nodeid) for at, nodeid, _ in view.forgets]
    return out


def plan(script: Script) -> Plan:
    """Decode the recorded messages and work out the replay's order (see the module)."""
    decoder = SessionDecoder()
    live: dict[IdKey, int] = {}  # id in use → unique of the reply that last handed it out
    refs: dict[int, int] = {}  # recorded node id → lookups the kernel holds
    freed: dict[IdKey, int] = {}  # id out of use → unique of the request that freed it
    last_listing: dict[int, int] = {}  # directory fh → unique of its last listing's reply
    producers: dict[int, dict[IdKey, int]] = {}
    needs: dict[int, list[int]] = {}
    needs_sent: dict[int, list[int]] = {}
    by_unique = {ex.unique: ex for ex in script.exchanges}
    for kind, ex in script.steps:
        if kind == SEND:
            msg = decoder.feed_request(ex.raw)
            ex.view = request_view(ex.raw, msg.brief)
            ex.pending = decoder.pending.get(ex.unique)
            mine: dict[IdKey, int] = {}
            for _, what, value in named(ex.view):
                source = live.get((what, value))
                if source is not None:
                    mine[(what, value)] = source
            if ex.opcode in _LISTINGS and ex.view.brief.get("offset"):
                fh = ex.view.brief.get("fh") or 0
                if fh in last_listing:  # its offset came from the last listing of this fh
                    needs.setdefault(ex.unique, []).append(last_listing[fh])
            if mine:
                producers[ex.unique] = mine
                needs.setdefault(ex.unique, []).extend(dict.fromkeys(mine.values()))
            if ex.opcode in _RELEASES:
                fh = ex.view.brief.get("fh") or 0
                if live.pop((FH, fh), None) is not None:
                    freed[(FH, fh)] = ex.unique
            elif ex.opcode in _FORGETS:
                pairs = ([(n, c) for _, n, c in ex.view.forgets] if ex.view.forgets
                         else [(ex.view.brief.nodeid, ex.view.brief.get("nlookup") or 0)])
                for node, count in pairs:
                    if node in refs:
                        refs[node] -= count
                        if refs[node] <= 0:
                            del refs[node]
                            live.pop((NODE, node), None)
                            freed[(NODE, node)] = ex.unique
            continue
        assert ex.reply is not None
        msg = decoder.feed_reply(ex.reply)
        ex.reply_brief = msg.brief
        if ex.opcode in _LISTINGS:
            last_listing[ex.view.brief.get("fh") or 0] = ex.unique
        for key in handed_out(ex.opcode, ex.reply, msg.brief, ex.reply_true_len):
            release = freed.pop(key, None)
            if release is not None and release != ex.unique:
                freer = by_unique[release]
                if freer.answered and freer.reply_index is not None and freer.reply_index < ex.reply_index:
                    needs.setdefault(ex.unique, []).append(release)
                else:
                    needs_sent.setdefault(ex.unique, []).append(release)
            live[key] = ex.unique
            if key[0] == NODE:
                refs[key[1]] = refs.get(key[1], 0) + 1
    index = {ex.unique: i for i, ex in enumerate(script.exchanges)}
    forward = [ex for ex in script.exchanges
               if any(index[b] > index[ex.unique]
                      for b in (*needs.get(ex.unique, ()), *needs_sent.get(ex.unique, ())))]
    order, steps = list(script.exchanges), list(script.steps)
    if forward:  # else every request already comes after what it waits for
        order_gates: dict[Hashable, list[Hashable]] = {}
        step_gates: dict[Hashable, list[Hashable]] = {}
        for ex in script.exchanges:
            u = ex.unique
            order_gates[u] = [*needs.get(u, ()), *needs_sent.get(u, ())]
            gates: list[Hashable] = [(EXPECT, b) if by_unique[b].answered else (SEND, b)
                                     for b in needs.get(u, ())]
            gates += [(SEND, b) for b in needs_sent.get(u, ())]
            step_gates[(SEND, u)] = gates
            step_gates[(EXPECT, u)] = [(SEND, u)]
        order = _held(order, order_gates, lambda ex: ex.unique)
        steps = _held(steps, step_gates, lambda step: (step[0], step[1].unique))
    return Plan(order, steps, by_unique, decoder, producers,
                {u: tuple(dict.fromkeys(v)) for u, v in needs.items()},
                {u: tuple(dict.fromkeys(v)) for u, v in needs_sent.items()}, len(forward))


def _held(items: list[T], gates: dict[Hashable, list[Hashable]], key: Any) -> list[T]:
    """`items` in their order, except that an item whose gates are not all placed yet is
    placed right after the last of them (and what waits on it, after it)."""
    placed: set[Hashable] = set()
    out: list[T] = []
    waiting: dict[Hashable, list[T]] = {}

    def missing(item: T) -> Hashable | None:
        return next((g for g in gates.get(key(item), ()) if g not in placed), None)

    for item in items:
        gate = missing(item)
        if gate is not None:
            waiting.setdefault(gate, []).append(item)
            continue
        queue = [item]
        while queue:
            it = queue.pop(0)
            out.append(it)
            placed.add(key(it))
            for w in waiting.pop(key(it), []):
                gate = missing(w)
                if gate is None:
                    queue.append(w)
                else:
                    waiting.setdefault(gate, []).append(w)
    if waiting:  # a gate that never comes (not in `items`): the rest as recorded
        left = {id(w) for ws in waiting.values() for w in ws}
        out += [item for item in items if id(item) in left]
    return out
