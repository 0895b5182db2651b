"""What in a replay the kernel (or a user) would call a bug in the server."""

from __future__ import annotations

import struct

from dissectors.constants import OUT_HEADER_SIZE, Opcode
from dissectors.context import DEFAULT_CONTEXT
from dissectors.layouts import REPLIES, struct_size
from dissectors.structs import FuseStruct
from inspector.reduce.signature import CRASH_SIGNALS
from inspector.replay import ReplayReport
from traces import Kind, TraceReader

_OUT = struct.Struct("<IiQ")
ERRNO_LIMIT = 512  # fuse_dev_do_write refuses error <= -ERESTARTSYS or > 0
_VARIABLE = frozenset({Opcode.INIT, Opcode.GETXATTR, Opcode.LISTXATTR})


def fixed_reply_size(opcode: int) -> int | None:
    """The body size a successful reply must have, when its layout is fixed structs only
    (the kernel refuses any other size for those)."""
    entry = REPLIES.get(opcode)
    if entry is None or opcode in _VARIABLE:
        return None
    plan = entry if isinstance(entry, list) else entry(DEFAULT_CONTEXT, b"")
    if isinstance(plan, tuple):
        plan = plan[0]
    if not all(isinstance(e, type) and issubclass(e, FuseStruct) for e in plan):
        return None
    return sum(struct_size(e) for e in plan)


def verdict(report: ReplayReport, replayed: str, unique: int, opcode: int) -> str | None:
    """A one-line finding about the mutated request (`unique`), or None."""
    err = report.error or ""
    if "while handling" in err or "hangs on it" in err or "crashed" in err:
        return err
    if report.server_exit and any(s in report.server_exit for s in CRASH_SIGNALS):
        return f"the server {report.server_exit}"
    try:
        replies = [r.raw for r in TraceReader(replayed) if r.kind is Kind.REPLY and r.raw]
    except Exception:  # no replayed trace: nothing more to look at
        return None
    for raw in replies:
        if len(raw) < _OUT.size:
            continue
        length, error, uniq = _OUT.unpack_from(raw)
        if uniq != unique:
            continue
        name = Opcode(opcode).name if opcode in Opcode._value2member_map_ else str(opcode)
        if error > 0 or error <= -ERRNO_LIMIT:
            return f"{name} reply with error {error}: out of the range the kernel takes"
        want = fixed_reply_size(opcode)
        if error == 0 and want is not None and len(raw) - OUT_HEADER_SIZE != want:
            return (f"{name} reply body of {len(raw) - OUT_HEADER_SIZE} bytes, the kernel "
                    f"takes exactly {want}")
    return None
