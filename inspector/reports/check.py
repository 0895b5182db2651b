"""`fusetrace check`: every anomaly with the records that prove it; exit 0 clean, 1 not.

Notes (what is open at the end of a trace that does not hold the session's end) are
shown but do not fail the check: the trace cannot say whether they would have closed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import IO

from ..lifecycles import ANOMALY_KINDS, Analysis, Anomaly
from .common import session_line

SHOWN_PER_CODE = 20
_ORDER = {"error": 0, "warning": 1, "note": 2}


def failed(a: Analysis) -> bool:
    return any(an.severity != "note" for an in a.anomalies)


def _records(an: Anomaly) -> str:
    shown = ",".join(str(r) for r in an.records[:8])
    return "#" + shown + (f",… ({len(an.records)})" if len(an.records) > 8 else "")


def write_check(a: Analysis, out: IO[str], show_all: bool = False) -> None:
    by_code: dict[str, list[Anomaly]] = defaultdict(list)
    for an in a.anomalies:
        by_code[an.code].append(an)
    print(session_line(a), file=out)
    if a.tail:
        print(f"  note: {a.tail}", file=out)
    if not a.anomalies:
        print("no anomalies", file=out)
        return
    codes = sorted(by_code, key=lambda c: (_ORDER[ANOMALY_KINDS[c][0]], by_code[c][0].records))
    for code in codes:
        found = by_code[code]
        sev, meaning = ANOMALY_KINDS[code]
        print(f"\n{sev.upper()} {code} ({len(found)}): {meaning}", file=out)
        for an in found if show_all else found[:SHOWN_PER_CODE]:
            print(f"  {_records(an):<16} {an.message}", file=out)
        if not show_all and len(found) > SHOWN_PER_CODE:
            print(f"  … and {len(found) - SHOWN_PER_CODE} more (--all shows them)", file=out)
    counts = {s: sum(1 for an in a.anomalies if an.severity == s) for s in _ORDER}
    print(f"\n{counts['error']} errors, {counts['warning']} warnings, {counts['note']} notes",
          file=out)


def write_check_json(a: Analysis, out: IO[str]) -> None:
    json.dump({"trace": a.path, "records": a.records, "tail": a.tail, "ended": a.ended,
               "end_reason": a.end_reason, "init": a.init, "failed": failed(a),
               "anomalies": [an.as_dict() for an in a.anomalies]}, out, indent=1)
    out.write("\n")
