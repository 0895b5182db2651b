"""`fusetrace follow`: one id's lifecycle as a timeline, each event with its decoded
message, ending with the verdict."""

from __future__ import annotations

import json
from typing import IO, Any

from traces import TraceIndex

from ..lifecycles import Analysis, Lifecycle
from ..ranges import primed_decoder, records_in
from ..timeline import entries


def event_lines(idx: TraceIndex, lc: Lifecycle) -> list[tuple[int, str]]:
    """(record number, decoded line) of each event, decoded in the connection's state."""
    rows = lc.records
    if not rows:
        return []
    dec = primed_decoder(idx, rows[0])
    return [(e.record.index, f"{e.arrow} {e.text}") for e in entries(records_in(idx, rows, dec), dec)]


def write_follow(a: Analysis, kind: str, key: int, out: IO[str]) -> bool:
    """Print every generation of (kind, key); False when the trace never names it."""
    found = a.find(kind, key)
    if not found:
        return False
    idx = a.index()
    t0 = idx.ts(0) if len(idx) else 0
    for lc in found:
        label = f": {lc.label}" if lc.label and lc.kind != "request" else ""
        print(f"{lc.name}{label}", file=out)
        decoded = dict(event_lines(idx, lc))
        for e in lc.events:
            print(f"{e.index:>8} {(e.ts - t0) / 1e9:11.6f}  {e.what:<20} {e.detail}", file=out)
            if e.index in decoded:
                print(f"{'':>21}  {decoded[e.index]}", file=out)
        print(f"  verdict: {lc.verdict} (state: {lc.state})", file=out)
        for an in lc.anomalies:
            print(f"  {an.severity} {an.code}: {an.message}", file=out)
        print(file=out)
    return True


def follow_json(a: Analysis, kind: str, key: int) -> list[dict[str, Any]]:
    idx = a.index()
    result = []
    for lc in a.find(kind, key):
        decoded = dict(event_lines(idx, lc))
        item = lc.as_dict()
        item["events"] = [{"index": e.index, "ts": e.ts, "what": e.what, "detail": e.detail,
                           "text": decoded.get(e.index, "")} for e in lc.events]
        item["anomalies"] = [an.as_dict() for an in lc.anomalies]
        result.append(item)
    return result


def write_follow_json(a: Analysis, kind: str, key: int, out: IO[str]) -> bool:
    found = follow_json(a, kind, key)
    json.dump(found, out, indent=1)
    out.write("\n")
    return bool(found)
