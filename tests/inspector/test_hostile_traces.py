"""Hostile traces: hypothesis mutates a valid trace (types swapped, lengths huge or
negative, deep nesting, unknown kinds, records duplicated, dropped and reordered, header
fields replaced) and every command that reads traces runs over it in-process. None may
raise; each exits with one of its documented statuses, and an exit 2 says why in one line.

The commands: show (plain, -v -x, a range, a filter), export (JSON lines, Perfetto),
check, follow, stats, the browser's model (rows, decoded panes, a filter), replay's and
serve's trace loading (which the pytest plugin uses too), and serve's answers and mount
options. Nothing is mounted and no server is started.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissectors.constants import Opcode
from dissectors.structs import FuseInHeader, FuseInitIn
from inspector import syscalls
from inspector.cli import main
from inspector.lifecycles import analyse
from inspector.query import parse
from inspector.replay.script import ReplayError, load
from inspector.serve import ReplyBook, Responder
from inspector.serve.book import BadTrace
from inspector.serve.session import SERVABLE_FLAGS, ServeError, mount_options
from traces import TraceIndex, TraceReadError
from traces.testing import synthetic_trace
from tui.decoded import exchange
from tui.model import BrowseModel

_OFFERED = 0x5FD73FFFFFB

# --- the valid trace everything starts from --------------------------------------------


def _base() -> tuple[bytes, dict[str, Any], list[Any]]:
    """A synthetic session (INIT, opens with passthrough, ioctls, cut data) plus the
    events the analyses read, as its header and record objects."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "base.fzt")
        synthetic_trace(path, 80, seed=3)
        unpacker = msgpack.Unpacker(io.BytesIO(path.read_bytes()), raw=False)
        header, *records = list(unpacker)
    header["mount"] = {"flags": syscalls.MS_NOSUID | syscalls.MS_NODEV, "data": "fd=3"}
    ts = records[-1][1]
    records[1:1] = [[4, records[0][1], {"event": "server_start", "pid": 42, "argv": ["srv"]}]]
    records[-1:-1] = [
        [4, ts - 3, {"event": "reply_rejected", "unique": 4, "opcode": 1, "write_errno": 2,
                     "connection_gone": False}],
        [4, ts - 2, {"event": "request_not_forwarded", "unique": 6}],
        [4, ts - 1, {"event": "server_exit", "pid": 42, "status": 0}],
    ]
    return msgpack.packb(header, use_bin_type=True), header, records


BASE_HEADER_BYTES, BASE_HEADER, BASE_RECORDS = _base()

# --- mutations -------------------------------------------------------------------------

_INTS = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1),
                  st.sampled_from([-1, 0, 1, 4, 16, 40, 1 << 31, (1 << 32) - 1, 1 << 32,
                                   (1 << 63) - 1, 1 << 63, (1 << 64) - 1]))
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, st.floats(), st.text(max_size=8),
                     st.binary(max_size=64))
VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
_META_KEYS = st.sampled_from(["cmd", "arg", "result", "errno", "tid", "pid", "fd", "path",
                              "out", "len", "original", "reason", "write_errno", "fragments",
                              "unique", "opcode", "connection_gone", "event", "status", "x"])
_HEADER_KEYS = st.sampled_from(["magic", "format", "snaplen", "options", "mount",
                                "mountpoint", "argv", "kernel", "source", "created", "tool"])


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"k": [value]}
    return value


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A few edits, each naming a record by a fraction of the trace's length."""
    where = st.floats(0, 1, exclude_max=True)
    one = st.one_of(
        st.tuples(st.just("item"), where, st.integers(0, 4), VALUES),
        st.tuples(st.just("meta"), where, _META_KEYS, VALUES),
        st.tuples(st.just("raw"), where, st.binary(max_size=96)),
        st.tuples(st.just("cut"), where, st.integers(0, 120)),
        st.tuples(st.just("patch"), where, st.integers(0, 60), _INTS),
        st.tuples(st.just("deep"), where, st.integers(1, 250)),
        st.tuples(st.just("kind"), where, _INTS),
        st.tuples(st.just("dup"), where),
        st.tuples(st.just("drop"), where),
        st.tuples(st.just("swap"), where, where),
        st.tuples(st.just("insert"), where, st.lists(VALUES, max_size=5)),
        st.tuples(st.just("header"), _HEADER_KEYS, VALUES),
    )
    return draw(st.lists(one, min_size=1, max_size=4))


def _apply(edits: list[tuple[Any, ...]]) -> tuple[dict[str, Any], list[Any]]:
    header = dict(BASE_HEADER)
    records: list[Any] = [list(r) if isinstance(r, list) else r for r in BASE_RECORDS]
    for edit in edits:
        op = edit[0]
        if op == "header":
            header[edit[1]] = edit[2]
            continue
        if not records:
            continue
        i = int(edit[1] * len(records))
        rec = records[i]
        if op == "item" and isinstance(rec, list):
            pos = min(edit[2], len(rec))
            rec[pos:pos + 1] = [edit[3]]
        elif op == "meta" and isinstance(rec, list) and rec:
            if len(rec) == 3 and not isinstance(rec[2], dict):
                rec.append({})
            meta = rec[-1] if isinstance(rec[-1], dict) else None
            if meta is not None:
                rec[-1] = {**meta, edit[2]: edit[3]}
        elif op == "raw" and isinstance(rec, list) and len(rec) >= 3:
            rec[2] = edit[2]
        elif op == "cut" and isinstance(rec, list) and len(rec) >= 3 and isinstance(rec[2], bytes):
            rec[2] = rec[2][:edit[2]]
        elif op == "patch" and isinstance(rec, list) and len(rec) >= 3 and isinstance(rec[2], bytes):
            raw = bytearray(rec[2].ljust(edit[2] + 8, b"\0"))
            raw[edit[2]:edit[2] + 8] = (edit[3] % (1 << 64)).to_bytes(8, "little")
            rec[2] = bytes(raw)
        elif op == "deep" and isinstance(rec, list):
            rec.append(_deep(edit[2])) if len(rec) < 4 else rec.__setitem__(-1, _deep(edit[2]))
        elif op == "kind" and isinstance(rec, list) and rec:
            rec[0] = edit[2]
        elif op == "dup":
            records.insert(i, list(rec) if isinstance(rec, list) else rec)
        elif op == "drop":
            del records[i]
        elif op == "swap":
            j = int(edit[2] * len(records))
            records[i], records[j] = records[j], records[i]
        elif op == "insert":
            records.insert(i, edit[2])
    return header, records


def _write(path: Path, header: dict[str, Any], records: list[Any]) -> None:
    packer = msgpack.Packer(use_bin_type=True)
    with open(path, "wb") as f:
        f.write(packer.pack(header))
        for rec in records:
            f.write(packer.pack(rec))


# --- the commands ----------------------------------------------------------------------

#: argv after the trace's path → the exit statuses the command documents (3: the trace
#: is damaged and the command used what came before the damage)
COMMANDS: list[tuple[list[str], set[int]]] = [
    (["show", "{t}"], {0, 2, 3}),
    (["show", "-v", "-x", "{t}"], {0, 2, 3}),
    (["show", "-r=-20:", "{t}"], {0, 2, 3}),
    (["show", "--filter", "err or backing or anomaly or lat>1us", "{t}"], {0, 2, 3}),
    (["export", "--jsonl", "-o", "{d}/out.jsonl", "{t}"], {0, 2, 3}),
    (["export", "--perfetto", "-o", "{d}/out.json", "{t}"], {0, 2, 3}),
    (["export", "--pcapng", "-o", "{d}/out.pcapng", "{t}"], {0, 2, 3}),
    (["check", "{t}"], {0, 1, 2, 3}),
    (["check", "--json", "{t}"], {0, 1, 2, 3}),
    (["follow", "--backing-id", "1", "{t}"], {0, 1, 2, 3}),
    (["follow", "--nodeid", "2", "{t}"], {0, 1, 2, 3}),
    (["stats", "{t}"], {0, 2, 3}),
    (["stats", "--json", "{t}"], {0, 2, 3}),
    (["compress", "-o", "{d}/out.fzt.zst", "{t}"], {0, 2, 3}),
]


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _browse(path: Path) -> None:
    """What the browser's model and panes do with a trace, without the app."""
    model = BrowseModel(str(path))
    with TraceIndex.open(path) as idx:
        model.attach(idx)
        assert model.pairs is not None and model.rows is not None
        model.pairs.update()
        model.indexed()
        model.set_analysis(analyse(idx))
        for i in range(len(idx)):
            model.rows.row(i).cells()
            exchange(idx, model.pairs, i)
        model.set_filter(*(lambda q: (q, q.select(model.context())))(parse("err or backing")))


def _serve(path: Path) -> None:
    """Serve's loading, its answers to the trace's own requests, and its mount options."""
    try:
        book = ReplyBook.load(path)
    except (BadTrace, TraceReadError):
        return
    try:
        opts = mount_options(book.header)
    except ServeError:
        pass
    else:
        assert not opts.flags & ~SERVABLE_FLAGS, "only per-mount flags reach mount(2)"
        assert opts.flags & syscalls.MS_NOSUID and opts.flags & syscalls.MS_NODEV
    res = Responder(book)
    res.respond(bytes(FuseInHeader(opcode=Opcode.INIT, unique=1)
                      / FuseInitIn(major=7, minor=45, flags=_OFFERED & 0xFFFFFFFF,
                                   flags2=_OFFERED >> 32)))
    with TraceIndex.open(path) as idx:
        for ex in book.exchanges:
            raw = idx.record(ex.index).raw
            assert raw is not None
            res.respond(raw)
    res.finish("end").text()


def _replay(path: Path) -> None:
    with contextlib.suppress(ReplayError):
        load(path)


IN_PROCESS: list[Callable[[Path], None]] = [_browse, _serve, _replay]


def drive(path: Path) -> None:
    """Every command over `path`: documented statuses, one-line errors, no exception."""
    for argv, allowed in COMMANDS:
        args = [a.format(t=path, d=path.parent) for a in argv]
        code, err = _run(args)
        assert code in allowed, (args, code, err)
        last = err.rstrip("\n").splitlines()[-1] if err.strip() else ""
        if code == 2:
            assert last.startswith("fusetrace: "), (args, err)
        assert (code == 3) == last.startswith(f"fusetrace: warning: {path} is damaged: "), \
            (args, code, err)
    for run in IN_PROCESS:
        with contextlib.suppress(TraceReadError):  # what the app and commands exit 2 on
            run(path)


def test_the_valid_trace_passes_every_command(tmp_path: Path) -> None:
    path = tmp_path / "t.fzt"
    _write(path, BASE_HEADER, BASE_RECORDS)
    drive(path)
    assert _run(["check", str(path)])[0] in (0, 1)
    assert load(path).exchanges, "replay reads the unmutated trace"
    assert ReplyBook.load(path).exchanges, "serve reads it too"


@settings(max_examples=int(os.environ.get("FUSETRACE_HOSTILE_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(edits=mutations())
def test_mutated_traces_never_crash_a_command(edits: list[tuple[Any, ...]]) -> None:
    header, records = _apply(edits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t.fzt")
        try:
            _write(path, header, records)
        except (ValueError, OverflowError, TypeError):
            pytest.skip("not representable in msgpack")  # never reached with these values
        drive(path)


@pytest.mark.parametrize("bad", [
    [3, 5, {"cmd": 0x4010E501, "arg": 7, "result": 1}],  # the review's example: len(7)
    [2, 5, b"\x10\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0", {"len": -1}],
    [4, 5, {"event": "reply_rejected", "unique": "4", "write_errno": 2}],
])
def test_a_bad_record_is_a_note_not_a_traceback(tmp_path: Path, bad: list[Any]) -> None:
    """`check` on a trace with a crafted record: the records before it are checked, the
    note says where reading stopped, and the exit is the damaged trace's 3, not
    1-by-traceback."""
    path = tmp_path / "t.fzt"
    _write(path, BASE_HEADER, [*BASE_RECORDS[:20], bad, *BASE_RECORDS[20:]])
    code, _ = _run(["check", str(path)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(["check", str(path)])
    assert code == 3
    assert "after 20 good records: bad record:" in out.getvalue()
    stats = io.StringIO()
    with contextlib.redirect_stdout(stats), contextlib.redirect_stderr(io.StringIO()):
        assert main(["stats", str(path)]) == 3
    assert "tail:        trace cut at byte" in stats.getvalue()
    drive(path)
