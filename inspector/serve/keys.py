"""What makes two requests "the same request" when a trace answers a live kernel.

A request is reduced to its opcode and a map of fields: the node id, every field of its
fixed structs, its names and its data. Left out are the values that differ between two
runs of the same workload without changing what is asked:
- `unique` (the kernel's request counter) and the caller's `pid`;
- the ids the kernel chooses afresh every run (lock owners, the locking pid, POLL's
  `kh`: the kernel-chosen ids of `dissectors.ids`);
- IOCTL's `arg`: in general the caller's pointer (Python's isatty() makes one on every
  open); the bytes it points to travel as the request's data and are compared;
- padding and reserved words;
- an id field whose condition in `dissectors.ids` fails (GETATTR's `fh` without
  FUSE_GETATTR_FH, SETATTR's without FATTR_FH …): the word is not an id then;
- in SETATTR, the fields its `valid` mask does not enable, `ctime` (the kernel's clock,
  sent with writeback caching), and times set to "now" (`FATTR_*_NOW`: the kernel fills
  in its clock).
File data (WRITE, SETXATTR values) is compared up to the trace's snap length, the part
the trace kept. A body that did not decode is compared as raw bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dissectors.constants import Opcode
from dissectors.ids import ID_FIELDS, KERNEL_CHOSEN, id_fields
from dissectors.offsets import IN_HEADER_SIZE
from dissectors.quick import Brief
from dissectors.structs import SETATTR_NOW, SETATTR_VALID

Fields = dict[str, Any]
Key = tuple[int, tuple[tuple[str, Any], ...]]

IGNORED = frozenset({"unique", "pid", "padding", "dummy", "unused", "unused4", "unused5",
                     "reserved"} | {f.field for f in ID_FIELDS if f.kind in KERNEL_CHOSEN})


def request_fields(brief: Brief, raw: bytes, snaplen: int) -> Fields:
    """The fields of a request that must match, by name (see the module docstring)."""
    fields: Fields = {"nodeid": brief.nodeid}
    for comp, values in brief.layers:
        named = dict(zip(comp.names, values))
        for idf in id_fields(comp.cls):
            if idf.when is not None and not idf.applies(brief.opcode, named):
                named.pop(idf.field, None)  # not an id in this message: whatever it holds
        for name, value in named.items():
            if name not in IGNORED:
                fields[name] = value
    for name in ("name", "name2"):
        if name in brief.extras:
            fields[name] = brief.extras[name]
    end = min(brief.length, len(raw))
    data_len = brief.extras.get("data_len")
    if data_len:
        data = raw[end - data_len:end]
        fields["data"] = data[:snaplen] if snaplen else data
    if brief.reason:
        fields["body"] = raw[IN_HEADER_SIZE:end]
    if brief.opcode == Opcode.SETATTR:
        _trim_setattr(fields)
    elif brief.opcode == Opcode.IOCTL:
        fields.pop("arg", None)
    return fields


def _trim_setattr(fields: Fields) -> None:
    valid = fields.get("valid", 0)
    for name in ("ctime", "ctimensec"):  # the kernel's clock (writeback caching), never the caller's
        fields.pop(name, None)
    for name, bit in SETATTR_VALID.items():
        if not valid & bit or valid & SETATTR_NOW.get(name, 0):
            fields.pop(name, None)


def key_of(opcode: int, fields: Fields) -> Key:
    """A hashable key: equal keys, same request."""
    return opcode, tuple(sorted(fields.items()))


def differences(here: Fields, recorded: Fields) -> list[str]:
    """The fields that differ, one `name: X here, Y recorded` line each."""
    out = []
    for name in sorted(here.keys() | recorded.keys(), key=_field_order):
        a, b = here.get(name), recorded.get(name)
        if a != b:
            out.append(f"{name}: {show_value(name, a)} here, {show_value(name, b)} recorded")
    return out


def _field_order(name: str) -> tuple[int, str]:
    """nodeid and names first: they are what a reader checks first."""
    return ({"nodeid": 0, "name": 1, "name2": 2}.get(name, 3), name)


def show_value(name: str, value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, bytes):
        if name in ("data", "body"):
            digest = hashlib.sha256(value).hexdigest()[:12]
            return f"{len(value)} bytes (sha256 {digest}…)"
        return repr(value.decode("utf-8", "backslashreplace"))
    if name in ("fh", "fh_in", "fh_out") or name.endswith("flags") or name == "valid":
        return hex(value)
    return str(value)
