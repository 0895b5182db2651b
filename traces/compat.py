"""Format versions: the header check and the chain of upgrades for older trace files.

The format number is separate from the release number and changes only when the bytes
do. A change adds `convert_N_to_N+1` (a `Converter`) to `CONVERTERS` and bumps
`FORMAT_VERSION`; old converters stay forever, and `tests/data/` keeps a frozen trace of
every old format that the current reader must still read. No upgrade exists yet: v1 is
the first format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import TraceReadError
from .records import I64, U32, U64, fields_problem, is_int, str_list

MAGIC = "fusetrace"
FORMAT_VERSION = 1

RecordUpgrade = Callable[[Any], Any]

_STR = (lambda v: type(v) is str, "a string")
_STRINGS = (str_list, "a list of strings")
#: header key → (check, what it must be); other keys need only be plain data
HEADER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tool": _STR, "kernel": _STR, "source": _STR, "connect": _STR, "replay_of": _STR,
    "created": (lambda v: is_int(v, I64), "a 64-bit integer"),
    "snaplen": (lambda v: is_int(v, U32), "a 32-bit length"),
    "argv": _STRINGS, "server_argv": _STRINGS, "options": _STRINGS,
    "mountpoint": (lambda v: v is None or type(v) is str, "a string or nil"),
    "mount": (lambda v: type(v) is dict and is_int(v.get("flags", 0), U64)
              and all(type(v.get(k, "")) is str for k in ("source", "fstype", "data")),
              "a map of source, fstype, data (strings) and flags (an integer)"),
}


@dataclass(frozen=True)
class Converter:
    """One step N → N+1: how the header map and each record object change."""

    header: Callable[[dict[str, Any]], dict[str, Any]]
    record: RecordUpgrade


#: CONVERTERS[N] upgrades format N to N+1.
CONVERTERS: dict[int, Converter] = {}


def check_header(obj: Any, where: str) -> tuple[dict[str, Any], RecordUpgrade | None]:
    """The header brought to the current format, and the record upgrade to apply (or None)."""
    if type(obj) is not dict or obj.get("magic") != MAGIC:
        raise TraceReadError(f"{where}: not a fusetrace trace (bad magic)")
    version = obj.get("format")
    if type(version) is not int or version < 1:
        raise TraceReadError(f"{where}: not a fusetrace trace (bad format number {version!r})")
    if version > FORMAT_VERSION:
        raise TraceReadError(
            f"{where}: written by a newer fusetrace (format {version}); upgrade fusetrace "
            f"(this one reads formats up to {FORMAT_VERSION})")
    steps = [CONVERTERS[n] for n in range(version, FORMAT_VERSION)]
    header = obj
    for step in steps:
        header = step.header(header)
    why = fields_problem("header", header, HEADER_FIELDS)
    if why is not None:
        raise TraceReadError(f"{where}: not a valid trace header: {why}")
    if not steps:
        return header, None

    def upgrade(record: Any) -> Any:
        for step in steps:
            record = step.record(record)
        return record

    return header, upgrade
