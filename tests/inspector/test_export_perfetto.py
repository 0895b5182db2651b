"""`fusetrace export --perfetto` on a session recorded live: the trace-event format's
documented fields, one slice per request/reply pair, one async span per backing id with
arrows from its ioctl to the opens that carried it, and refusal of damaged traces."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dissectors.constants import NO_REPLY_OPCODES, Opcode
from inspector.damaged import warning
from inspector.export.perfetto import perfetto_trace
from inspector.lifecycles import analyse
from inspector.timeline import entries
from traces import TraceReader
from export_support import damaged_copies, record_session
from record_support import fusetrace

pytestmark = [pytest.mark.requires_fuse, pytest.mark.timeout(120)]

#: The phases this export uses and the fields the format requires for each
#: (Trace Event Format: "X" complete, "i" instant, "b"/"e" async, "s"/"f" flow, "M" metadata).
REQUIRED = {"X": {"name", "cat", "ts", "dur", "pid", "tid"}, "i": {"name", "cat", "ts", "pid", "tid", "s"},
            "b": {"name", "cat", "ts", "pid", "id"}, "e": {"name", "cat", "ts", "pid", "id"},
            "s": {"name", "cat", "ts", "pid", "tid", "id"}, "f": {"name", "cat", "ts", "pid", "tid", "id", "bp"},
            "M": {"name", "pid", "args"}}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_session(tmp_path_factory.mktemp("perfetto"))


@pytest.fixture(scope="module")
def doc(session: Path) -> dict[str, Any]:
    out = session.parent / "session.json"
    done = fusetrace("export", "--perfetto", "-o", str(out), str(session))
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(out.read_text())


def test_every_event_has_the_format_fields(doc: dict[str, Any]) -> None:
    assert doc["displayTimeUnit"] in ("ms", "ns")
    events = doc["traceEvents"]
    phases = Counter(e["ph"] for e in events)
    assert set(phases) == set(REQUIRED), phases
    for e in events:
        missing = REQUIRED[e["ph"]] - e.keys()
        assert not missing, (missing, e)
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] == "i":
            assert e["s"] in ("g", "p", "t")
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and e["args"]["name"]


def test_slices_on_one_thread_nest(doc: dict[str, Any]) -> None:
    """Perfetto drops slices that overlap without nesting on one thread."""
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_thread.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end


def test_every_pair_is_one_slice(session: Path, doc: dict[str, Any]) -> None:
    pairs: dict[int, tuple[int, int, str, int, int]] = {}  # request record → reply record …
    asked: dict[int, tuple[int, int, int]] = {}
    instants = 0
    with TraceReader(session) as reader:
        for entry in entries(reader):
            msg = entry.message
            if msg is None:
                continue
            b = msg.brief
            if entry.record.is_request:
                if b.opcode in NO_REPLY_OPCODES or b.opcode == Opcode.INTERRUPT:
                    instants += 1
                else:
                    asked[b.unique] = (entry.record.index, entry.record.ts, b.pid)
            elif b.unique:
                index, ts, pid = asked.pop(b.unique)
                pairs[index] = (entry.record.index, entry.record.ts - ts, Opcode(b.opcode).name,
                                -b.error, pid)
    assert not asked
    slices = {e["args"]["record"]: e for e in doc["traceEvents"] if e["ph"] == "X"}
    assert slices.keys() == pairs.keys()
    errors = 0
    for index, (reply, dur_ns, name, err, pid) in pairs.items():
        s = slices[index]
        assert (s["name"], s["args"]["reply_record"]) == (name, reply)
        assert s["dur"] == pytest.approx(dur_ns / 1000, abs=0.002)
        assert s["pid"] == (pid or 1 << 22)
        assert ("error" in s["args"]) == bool(err) == ("error" in s["cat"])
        errors += bool(err)
    assert errors >= 5  # the workload's ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, ENODATA
    fuse_instants = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["cat"] == "fuse"]
    assert len(fuse_instants) == instants


def test_every_backing_id_is_one_span_with_arrows_to_its_opens(session: Path,
                                                              doc: dict[str, Any]) -> None:
    events = doc["traceEvents"]
    backing = analyse(session).lifecycles("backing")
    assert len(backing) >= 3
    begins = [e for e in events if e["ph"] == "b"]
    ends = {e["id"]: e for e in events if e["ph"] == "e"}
    assert sorted((e["args"]["backing_id"], e["args"]["generation"]) for e in begins) == \
        sorted((lc.key, lc.generation) for lc in backing)
    ioctls = {e["args"]["record"]: e for e in events if e["ph"] == "i" and "ioctl" in e["cat"]}
    slices = {e["args"]["reply_record"]: e for e in events if e["ph"] == "X" and "reply_record" in e["args"]}
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts.keys() == finishes.keys()
    for lc, b in zip(sorted(backing, key=lambda lc: (lc.key, lc.generation)),
                     sorted(begins, key=lambda e: (e["args"]["backing_id"], e["args"]["generation"]))):
        first, last = lc.events[0], lc.events[-1]
        assert b["ts"] == pytest.approx(first.ts / 1000, abs=0.002)
        assert ends[b["id"]]["ts"] == pytest.approx(last.ts / 1000, abs=0.002)
        ioctl = ioctls[first.index]
        assert ioctl["name"] == "FUSE_DEV_IOC_BACKING_OPEN" and ioctl["args"]["result"] == lc.key
        opens = [ev.index for ev in lc.events if ev.what.endswith(" reply")]
        assert opens
        arrows = [f for f in finishes.values() if f["name"] == lc.name
                  and starts[f["id"]]["ts"] == ioctl["ts"]]
        assert len(arrows) == len(opens)
        for f, reply in zip(sorted(arrows, key=lambda f: f["ts"]), opens):
            s = slices[reply]
            assert s["args"]["reply"]["backing_id"] == lc.key
            assert (f["pid"], f["tid"]) == (s["pid"], s["tid"])
            assert s["ts"] <= f["ts"] <= s["ts"] + s["dur"] and f["ts"] >= ioctl["ts"]


def test_damaged_traces_export_their_good_records(session: Path, tmp_path: Path) -> None:
    """The damaged-trace rule: the records before the damage, the note on it in
    `otherData.damaged`, one warning line on stderr and exit 3; a file and standard
    output alike."""
    whole = perfetto_trace(str(session))
    for what, path in damaged_copies(session, tmp_path).items():
        with TraceReader(path) as reader:
            good = sum(1 for _ in reader)
            tail = reader.tail
        out = tmp_path / f"{what}.json"
        done = fusetrace("export", "--perfetto", "-o", str(out), str(path))
        piped = fusetrace("export", "--perfetto", str(path))
        for run in (done, piped):
            assert run.returncode == 3, (what, run.stderr)
            assert run.stderr == warning(str(path), tail) + "\n"
        doc = json.loads(out.read_text())
        assert json.loads(piped.stdout) == doc
        assert doc["otherData"]["damaged"] == tail
        assert 0 < good and 0 < len(doc["traceEvents"]) < len(whole["traceEvents"])
        assert list(tmp_path.glob(".*")) == []
