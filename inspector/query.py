"""The filter language shared by `fusetrace show --filter` and the TUI's filter bar.

    op=OPEN,CREATE and nodeid=42        err              err=ENOENT,EACCES
    backing=3      fh=0x7f     node=5   lat>10ms         pid=1234
    unique=88      kind=ioctl           anomaly          n>=1000
    not (op=GETATTR or op=LOOKUP)

Atoms are `FIELD`, `FIELD OP VALUE[,VALUE...]` with OP one of = != < > <= >= (`!=` is
`not =`, a list means any of), combined with `and`, `or`, `not` and parentheses. Values
are decimal or 0x hex numbers, opcode and ioctl names, errno names and durations with a
unit (ns, us, ms, s). Names are case-insensitive.

Predicates about a FUSE exchange (op, nodeid, unique, err, lat, pid, backing, fh, node,
anomaly) select the request and its reply together; `kind` and `n` select single records.
Column predicates run over the `TraceIndex` columns as byte masks (fast on millions of
records); `backing`/`fh`/`node`/`anomaly` read the lifecycle `Analysis` (one pass over the
trace, made on first use), `pid` reads each request's header once.

Caveat: evaluated over a slice of rows (a live trace's new records), an exchange whose
other half lies outside the slice is selected only by its own half.
"""

from __future__ import annotations

import array
import errno
import re
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Callable

from dissectors.constants import Opcode
from dissectors.context import Dialect
from dissectors.ioctls import DevIoctl
from traces import TraceIndex
from traces.records import EVENT, IOCTL, REPLY, REQUEST

from .exchanges import Exchanges

if TYPE_CHECKING:
    from .lifecycles import Analysis


class QueryError(ValueError):
    """A filter that does not parse: where (0-based `pos`) and what was expected there."""

    def __init__(self, text: str, pos: int, message: str) -> None:
        super().__init__(f"filter error at column {pos + 1}: {message}")
        self.text, self.pos, self.message = text, pos, message

    def pointer(self) -> str:
        """The filter with a caret under the offending column."""
        return f"{self.text}\n{' ' * self.pos}^"


# --- values ----------------------------------------------------------------------------

_OPCODES = {op.name: int(op) for op in Opcode}
_IOCTLS = {k.name for k in DevIoctl} | {"PASSTHROUGH_OPEN_V0"}
_ERRNOS = {name: code for code, name in errno.errorcode.items()}
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s)", re.IGNORECASE)
KINDS = ("request", "reply", "notify", "ioctl", "event")


def _int(word: str) -> int:
    try:
        return int(word, 0)
    except ValueError:
        raise ValueError("a number (decimal or 0x hex)") from None


def _opcode(word: str) -> int | str:
    name = word.upper().removeprefix("FUSE_").removeprefix("DEV_IOC_")
    if name in _OPCODES:
        return _OPCODES[name]
    if name in _IOCTLS:
        return name
    try:
        return int(word, 0)
    except ValueError:
        raise ValueError("an opcode name (OPEN, LOOKUP, ...), an ioctl name "
                         "(BACKING_OPEN, ...) or a number") from None


def _errno(word: str) -> int:
    name = word.upper()
    if name in _ERRNOS:
        return _ERRNOS[name]
    try:
        return abs(int(word, 0))
    except ValueError:
        raise ValueError("an errno name (ENOENT, ...) or number") from None


def _duration(word: str) -> int:
    m = _DURATION.fullmatch(word)
    if m is None:
        raise ValueError("a duration with its unit, e.g. 10ms, 500us, 2s")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _kind(word: str) -> str:
    name = word.lower().rstrip("s")
    if name not in KINDS:
        raise ValueError(f"a record kind ({', '.join(KINDS)})")
    return name


def _word(word: str) -> str:
    return word.lower()


@dataclass(frozen=True)
class Field:
    """What one field name accepts."""

    name: str
    parse: Callable[[str], object]
    ordered: bool  # < > <= >= allowed
    bare: bool  # may stand alone (`err`, `anomaly`)
    help: str


_FIELDS = {f.name: f for f in (
    Field("op", _opcode, False, False, "opcode or ioctl name"),
    Field("nodeid", _int, True, False, "node id of the request"),
    Field("unique", _int, True, False, "request id"),
    Field("err", _errno, False, True, "replies with an error (any, or these errnos)"),
    Field("lat", _duration, True, False, "time from request to reply"),
    Field("pid", _int, True, False, "pid that made the request or ioctl"),
    Field("kind", _kind, False, False, "record kind: " + ", ".join(KINDS)),
    Field("backing", _int, False, True, "records of a backing id's lifecycle"),
    Field("fh", _int, False, True, "records of a file handle's lifecycle"),
    Field("node", _int, False, True, "records of a node id's lifecycle (lookups to forget)"),
    Field("anomaly", _word, False, True, "records proving an anomaly (any, or these codes)"),
    Field("n", _int, True, False, "record number"),
)}
_ALIASES = {"opcode": "op", "error": "err", "errno": "err", "latency": "lat", "id": "unique",
            "backing_id": "backing", "ino": "node", "record": "n", "#": "n"}
FIELD_NAMES = tuple(_FIELDS)


# --- the syntax tree -------------------------------------------------------------------

class _Eval:
    """Columns of rows [start, stop), fetched once per evaluation."""

    def __init__(self, ctx: QueryContext, start: int, stop: int) -> None:
        self.ctx, self.start, self.stop = ctx, start, stop
        self.n = stop - start
        self._cols: dict[str, array.array[int]] = {}

    def col(self, name: str) -> array.array[int]:
        got = self._cols.get(name)
        if got is None:
            got = self._cols[name] = self.ctx.idx.column(name, self.start, self.stop)
        return got

    def where(self, pred: Callable[[int], bool], column: str) -> bytearray:
        return bytearray(map(pred, self.col(column)))

    def of_kind(self, *kinds: int) -> bytearray:
        wanted = frozenset(kinds)
        return self.where(wanted.__contains__, "kind")

    def rows(self, records: object) -> bytearray:
        """A mask with the given record numbers set (those inside the slice)."""
        out = bytearray(self.n)
        start, stop = self.start, self.stop
        for i in records:  # type: ignore[attr-defined]
            if start <= i < stop:
                out[i - start] = 1
        return out

    def exchange(self, mask: bytearray) -> bytearray:
        """The mask plus the other half of every selected request or reply."""
        out = bytearray(mask)
        partner, start, stop = self.ctx.exchanges.partner, self.start, self.stop
        for i in compress(range(start, stop), mask):
            j = partner[i]
            if start <= j < stop:
                out[j - start] = 1
        return out


def _and(a: bytearray, b: bytearray) -> bytearray:
    n = len(a)
    return bytearray((int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(n, "little"))


def _or(a: bytearray, b: bytearray) -> bytearray:
    n = len(a)
    return bytearray((int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(n, "little"))


def _not(a: bytearray) -> bytearray:
    return a.translate(_FLIP)


_FLIP = bytes([1, 0]) + bytes(254)

_COMPARE: dict[str, Callable[[int], Callable[[int], bool]]] = {
    "=": lambda v: v.__eq__, "<": lambda v: v.__gt__, ">": lambda v: v.__lt__,
    "<=": lambda v: v.__ge__, ">=": lambda v: v.__le__,
}


@dataclass(frozen=True)
class Atom:
    field: str
    op: str | None  # None: the bare field
    values: tuple[object, ...]
    pos: int

    @property
    def needs_analysis(self) -> bool:
        return self.field in ("backing", "fh", "node", "anomaly")

    def mask(self, ev: _Eval) -> bytearray:
        if self.op == "!=":
            return _not(Atom(self.field, "=", self.values, self.pos).mask(ev))
        if self.field == "kind":
            return self._kind(ev)
        if self.field == "n":
            return self._numbers(ev)
        return ev.exchange(self._half(ev))

    def _any(self, ev: _Eval, column: str) -> bytearray:
        """Rows whose `column` compares true with one of the values."""
        if self.op == "=" and len(self.values) > 1:
            wanted = frozenset(self.values)
            return ev.where(wanted.__contains__, column)  # type: ignore[arg-type]
        return ev.where(_COMPARE[self.op or "="](self.values[0]), column)  # type: ignore[arg-type]

    def _half(self, ev: _Eval) -> bytearray:
        """The records that carry the property themselves (before adding partners)."""
        f = self.field
        if f == "op":
            return self._op(ev)
        if f == "nodeid":
            return _and(ev.of_kind(REQUEST), self._any(ev, "nodeid"))
        if f == "unique":
            return _and(_and(ev.of_kind(REQUEST, REPLY), ev.where(bool, "unique")),
                        self._any(ev, "unique"))
        if f == "err":
            replies = _and(ev.of_kind(REPLY), ev.where(bool, "unique"))
            if self.op is None:
                return _and(replies, ev.where((0).__gt__, "error"))
            wanted = frozenset(-v for v in self.values)  # type: ignore[operator]
            return _and(replies, ev.where(wanted.__contains__, "error"))
        if f == "lat":
            lats = ev.ctx.exchanges.latencies(ev.start, ev.stop)
            test = _COMPARE[self.op or "="](self.values[0])  # type: ignore[arg-type]
            return bytearray(lat >= 0 and test(lat) for lat in lats)
        if f == "pid":
            pids = ev.ctx.exchanges.pids()[ev.start:ev.stop]
            if self.op == "=" and len(self.values) > 1:
                return bytearray(map(frozenset(self.values).__contains__, pids))
            return bytearray(map(_COMPARE[self.op or "="](self.values[0]), pids))  # type: ignore[arg-type]
        if f == "anomaly":
            found = ev.ctx.analysis().anomalies
            codes = set(self.values)
            return ev.rows(i for a in found if not codes or a.code in codes for i in a.records)
        return self._lifecycles(ev)

    def _op(self, ev: _Eval) -> bytearray:
        opcodes = frozenset(v for v in self.values if isinstance(v, int))
        out = ev.where(opcodes.__contains__, "opcode")
        ioctls = {v for v in self.values if isinstance(v, str)}
        if ioctls:
            names = ev.ctx.exchanges.ioctl_names(ev.ctx.dialect())
            named = ev.rows(i for i, name in names.items() if name in ioctls)
            out = _or(out, named)
        return out

    def _lifecycles(self, ev: _Eval) -> bytearray:
        analysis = ev.ctx.analysis()
        if self.op is None:
            lives = analysis.lifecycles(self.field)
        else:
            lives = [life for key in self.values for life in analysis.find(self.field, key)]  # type: ignore[arg-type]
        return ev.rows(i for life in lives for i in life.records)

    def _numbers(self, ev: _Eval) -> bytearray:
        """Record numbers: a list, or one contiguous run for a comparison."""
        if self.op == "=":
            return ev.rows(self.values)
        v = int(self.values[0])  # type: ignore[call-overload]
        lo, hi = {"<": (0, v), "<=": (0, v + 1), ">": (v + 1, ev.stop),
                  ">=": (v, ev.stop)}[self.op or "="]
        lo, hi = min(max(lo - ev.start, 0), ev.n), min(max(hi - ev.start, 0), ev.n)
        return bytearray(lo) + b"\x01" * max(hi - lo, 0) + bytearray(ev.n - max(hi, lo))

    def _kind(self, ev: _Eval) -> bytearray:
        out = bytearray(ev.n)
        for kind in self.values:
            if kind == "request":
                part = ev.of_kind(REQUEST)
            elif kind == "ioctl":
                part = ev.of_kind(IOCTL)
            elif kind == "event":
                part = ev.of_kind(EVENT)
            else:
                unique = ev.where(bool, "unique")
                part = _and(ev.of_kind(REPLY), unique if kind == "reply" else _not(unique))
            out = _or(out, part)
        return out


@dataclass(frozen=True)
class Not:
    inner: Node

    @property
    def needs_analysis(self) -> bool:
        return self.inner.needs_analysis

    def mask(self, ev: _Eval) -> bytearray:
        return _not(self.inner.mask(ev))


@dataclass(frozen=True)
class Both:
    """`and` (all=True) or `or` of its parts: flat, so a long chain is no deep tree."""

    parts: tuple[Node, ...]
    all: bool

    @property
    def needs_analysis(self) -> bool:
        return any(part.needs_analysis for part in self.parts)

    def mask(self, ev: _Eval) -> bytearray:
        out = self.parts[0].mask(ev)
        for part in self.parts[1:]:
            if self.all and not any(out):
                return out
            out = _and(out, part.mask(ev)) if self.all else _or(out, part.mask(ev))
        return out


Node = Atom | Not | Both


# --- the parser ------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<op>!=|<=|>=|=|<|>)|(?P<punct>[(),])|(?P<word>[\w.:+#µ-]+))",
                    re.UNICODE)
_KEYWORDS = {"and", "or", "not"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # "op", "punct", "word", "end"
    text: str
    pos: int

    def shown(self) -> str:
        return "end of filter" if self.kind == "end" else repr(self.text)


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            out.append(_Tok("end", "", pos))
            return out
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryError(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or "word"
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()


#: how deep parentheses and 'not' may nest: far past any filter a person types, far
#: short of Python's recursion limit (each level is a few frames of the parser)
MAX_NESTING = 64


class _Parser:
    """Recursive descent: or → and → not → atom."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.at = 0
        self.depth = 0  # parentheses and 'not's open around the current token

    @property
    def tok(self) -> _Tok:
        return self.toks[self.at]

    def error(self, expected: str, tok: _Tok | None = None) -> QueryError:
        tok = tok or self.tok
        return QueryError(self.text, tok.pos, f"expected {expected}, found {tok.shown()}")

    def keyword(self, word: str) -> bool:
        if self.tok.kind == "word" and self.tok.text.lower() == word:
            self.at += 1
            return True
        return False

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.error("a filter such as op=OPEN, err or backing=3")
        node = self.disjunction()
        if self.tok.kind != "end":
            raise self.error("'and', 'or' or end of filter")
        return node

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self.keyword("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Both(tuple(parts), all=False)

    def conjunction(self) -> Node:
        parts = [self.negation()]
        while self.keyword("and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Both(tuple(parts), all=True)

    def negation(self) -> Node:
        if self.tok.kind == "word" and self.tok.text.lower() == "not" or (
                self.tok.kind == "punct" and self.tok.text == "("):
            if self.depth >= MAX_NESTING:
                raise QueryError(self.text, self.tok.pos, f"filter nested more than "
                                 f"{MAX_NESTING} deep (parentheses and 'not')")
            self.depth += 1
            try:
                return self._nested()
            finally:
                self.depth -= 1
        return self.atom()

    def _nested(self) -> Node:
        """`not X` or `( X )`, one level deeper."""
        if self.keyword("not"):
            return Not(self.negation())
        self.at += 1  # the "("
        node = self.disjunction()
        if not (self.tok.kind == "punct" and self.tok.text == ")"):
            raise self.error("')' or 'and'/'or'")
        self.at += 1
        return node

    def atom(self) -> Atom:
        tok = self.tok
        if tok.kind != "word" or tok.text.lower() in _KEYWORDS:
            raise self.error("a field (" + ", ".join(FIELD_NAMES) + "), 'not' or '('")
        name = _ALIASES.get(tok.text.lower(), tok.text.lower())
        field = _FIELDS.get(name)
        if field is None:
            raise QueryError(self.text, tok.pos, f"unknown field {tok.text!r}; fields are "
                             + ", ".join(FIELD_NAMES))
        self.at += 1
        if self.tok.kind != "op":
            if field.bare:
                return Atom(name, None, (), tok.pos)
            raise self.error(f"a comparison after {tok.text!r} (e.g. {name}=...)")
        op = self.tok
        if op.text not in ("=", "!=") and not field.ordered:
            raise QueryError(self.text, op.pos, f"{name} takes = or !=, not {op.text}")
        self.at += 1
        values = [self.value(field)]
        while self.tok.kind == "punct" and self.tok.text == ",":
            if op.text not in ("=", "!="):
                raise QueryError(self.text, self.tok.pos, f"a list of values needs = or !=")
            self.at += 1
            values.append(self.value(field))
        return Atom(name, op.text, tuple(values), tok.pos)

    def value(self, field: Field) -> object:
        tok = self.tok
        if tok.kind != "word":
            raise self.error(f"a value for {field.name}")
        try:
            value = field.parse(tok.text)
        except ValueError as exc:
            raise self.error(f"{exc} for {field.name}") from None
        self.at += 1
        return value


def parse(text: str) -> Query:
    """The filter `text` as a `Query`; raises `QueryError` saying where and what was expected."""
    return Query(text.strip(), _Parser(text.strip()).parse())


# --- evaluation ------------------------------------------------------------------------

class QueryContext:
    """What filters run over: one index, its pairing and (made on first use) its analysis.

    `analysis` may be an `Analysis` or a function making one (the TUI hands over the one
    it already has); without it `analyse(idx)` runs on first need.
    """

    def __init__(self, idx: TraceIndex, exchanges: Exchanges | None = None,
                 analysis: Analysis | Callable[[], Analysis] | None = None) -> None:
        self.idx = idx
        self.exchanges = exchanges or Exchanges(idx)
        self._analysis = analysis
        self._dialect: Dialect | None = None

    def analysis(self) -> Analysis:
        if self._analysis is None:
            from .lifecycles import analyse

            self._analysis = analyse(self.idx)
        elif callable(self._analysis):
            self._analysis = self._analysis()
        return self._analysis

    def dialect(self) -> Dialect:
        """The passthrough dialect INIT negotiated, which names the ioctls."""
        if self._dialect is None:
            from .ranges import primed_decoder

            self._dialect = primed_decoder(self.idx, len(self.idx)).ctx.dialect
        return self._dialect


@dataclass(frozen=True)
class Query:
    text: str
    node: Node

    @property
    def needs_analysis(self) -> bool:
        return self.node.needs_analysis

    def mask(self, ctx: QueryContext, start: int = 0, stop: int | None = None) -> bytearray:
        """One byte per record of [start, stop): 1 where the filter matches."""
        ctx.exchanges.update()
        stop = len(ctx.exchanges) if stop is None else min(stop, len(ctx.exchanges))
        start = min(start, stop)
        return self.node.mask(_Eval(ctx, start, stop))

    def select(self, ctx: QueryContext, start: int = 0, stop: int | None = None) -> array.array[int]:
        """Record numbers in [start, stop) the filter matches, in order."""
        mask = self.mask(ctx, start, stop)
        return array.array("q", compress(range(start, start + len(mask)), mask))
