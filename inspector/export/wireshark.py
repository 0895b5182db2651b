"""The Wireshark Lua dissector, generated from the dissectors' own Scapy structs and plans.

One source of truth: every struct's fields come from its `fields_desc` (a field added to a
Scapy layer appears in Wireshark), the body layouts from `layouts.py`'s plan functions,
probed over every negotiated minor, dialect and INIT flag bit that changes them, and the
names (opcodes, errnos, flags, modes, open flags, ioctls) from the same tables the text
views print. The hand-written part, `wireshark/fuse.lua`, only interprets those tables.

The plugin is generated when asked for (`fusetrace wireshark-plugin`) into the user's
cache and rewritten only when its text changed, so it always matches the installed
dissectors and is never a copy to maintain.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from scapy.fields import (
    EnumField,
    Field,
    FieldLenField,
    FieldListField,
    FlagsField,
    PacketField,
    PacketListField,
    StrField,
    StrFixedLenField,
    StrLenField,
)
from scapy.packet import Packet

from dissectors import fields as fuse_fields
from dissectors.constants import (
    FUSE_KERNEL_MINOR_VERSION,
    NO_REPLY_OPCODES,
    NotifyCode,
    Opcode,
)
from dissectors.context import Dialect, FuseContext
from dissectors.ioctls import (
    DevIoctl,
    FuseIoctlRaw,
    FuseIoctlU32,
    dissect_ioctl_arg,
    ioctl_arg_fields,
    ioctl_name,
)
from dissectors.layouts import notify_plan, reply_plan, request_plan, struct_size
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE
from dissectors.structs import (
    FuseElement,
    FuseInHeader,
    FuseOutHeader,
    FuseRaw,
    FuseStruct,
    struct_name,
)
from inspector import __version__

from .pcapng import DIALECT_CODES, ENCAP_SIZE, KIND_CODES, NOTE_BITS

PLUGIN_NAME = "fusetrace.lua"
_PROBE_BODY = bytes(4096)  # long enough for every plan's fixed structs
_LENGTHS = range(0, 257)  # body lengths probed for layouts chosen by length (INIT)
_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8}


class GeneratorError(Exception):
    """A struct or plan the generator cannot express in Lua: fix the generator, not the
    output (a silent approximation would show Wireshark users wrong fields)."""


def layer_id(cls: type[Packet]) -> str:
    """`FuseOpenOut` → `open_out`, `CuseInitIn` → `cuse_init_in`: the filter name's part."""
    name = cls.__name__
    name = name[4:] if name.startswith("Fuse") else name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class _Collector:
    """The layers (Scapy classes) the plans use, turned into Lua field programs."""

    def __init__(self) -> None:
        self.layers: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, dict[int, str]] = {}

    def table(self, kind: str, mapping: dict[int, str]) -> str:
        key = f"{kind}{len(self.tables)}"
        for name, existing in self.tables.items():
            if existing == mapping and name.startswith(kind):
                return name
        self.tables[key] = mapping
        return key

    def layer(self, cls: type[Packet]) -> str:
        lid = layer_id(cls)
        if lid in self.layers:
            return lid
        self.layers[lid] = {}  # reserve: nested layers may refer back
        ops = [op for fld in cls.fields_desc if (op := self.field(cls, fld)) is not None]
        self.layers[lid] = {
            "label": struct_name(cls), "ops": ops,
            "min": len(bytes(cls())) if issubclass(cls, FuseElement) else 0,
            "size": struct_size(cls) if issubclass(cls, FuseStruct) else 0,
        }
        return lid

    def field(self, cls: type[Packet], fld: Field) -> dict[str, Any] | None:
        name = fld.name
        if isinstance(fld, fuse_fields.NoteField):
            return {"k": "note", "n": name}
        if isinstance(fld, PacketField):
            return {"k": "struct", "n": name, "l": self.layer(fld.cls)}
        if isinstance(fld, PacketListField):
            return {"k": "list", "n": name, "l": self.layer(fld.cls),
                    "count": _counted(cls, fld)}
        if isinstance(fld, FieldListField):
            item = self.field(cls, fld.field)
            assert item is not None
            item["n"] = name
            return {"k": "intlist", "n": name, "item": item, "count": _counted(cls, fld)}
        if isinstance(fld, fuse_fields.CStringField):
            return {"k": "cstr", "n": name}
        if isinstance(fld, fuse_fields.AlignPadField):
            return {"k": "pad", "n": name, "align": fld.align, "fixed": fld.fixed,
                    "after": fld.after}
        if isinstance(fld, StrFixedLenField):
            return {"k": "bytes", "n": name, "size": fld.length_from(None)}
        if isinstance(fld, StrLenField):
            source, minus = _probe_length(cls, fld)
            named = any(isinstance(f, FieldLenField) and f.length_of == name
                        for f in cls.fields_desc)
            return {"k": "lenstr" if named else "lenbytes", "n": name, "from": source,
                    "minus": minus}
        if isinstance(fld, StrField):
            return {"k": "rest", "n": name}
        return self.integer(cls, fld)

    def integer(self, cls: type[Packet], fld: Field) -> dict[str, Any]:
        if isinstance(fld, FlagsField):
            size, signed = abs(fld.size) // 8, False
        elif isinstance(getattr(fld, "fmt", None), str) and fld.fmt[-1].upper() in _SIZES:
            code = fld.fmt[-1]
            size, signed = _SIZES[code.upper()], code.islower()
        else:
            raise GeneratorError(f"{cls.__name__}.{fld.name}: {type(fld).__name__} has no Lua form")
        op: dict[str, Any] = {"k": "int", "n": fld.name, "size": size, "signed": signed,
                              "rep": "dec"}
        if isinstance(fld, FlagsField):
            op.update(rep="flags", t=self.table("flags", {
                i: n for i, n in enumerate(fld.names) if not n.startswith("bit")}))
        elif isinstance(fld, fuse_fields.ErrnoField):
            op["rep"] = "errno"
        elif isinstance(fld, fuse_fields.ModeField):
            op["rep"] = "mode"
        elif isinstance(fld, fuse_fields.OpenFlagsField):
            op["rep"] = "oflags"
        elif isinstance(fld, EnumField):
            op.update(rep="enum", t=self.table("enum", dict(fld.i2s)))
        elif type(fld).__name__.startswith("X"):
            op["rep"] = "hex"
        return op


def _counted(cls: type[Packet], fld: Field) -> bool:
    """Lists counted by the previous struct's `count` (structs._count_of) say so; any other
    count source is new to the generator."""
    count_from = getattr(fld, "count_from", None)
    if count_from is None:
        return False
    if "_count_of" not in count_from.__code__.co_names:
        raise GeneratorError(f"{cls.__name__}.{fld.name}: unknown count source")
    return True


class _Probe:
    """Stands in for a packet in a `length_from` lambda: every attribute reads `value`."""

    def __init__(self, value: int) -> None:
        self.value, self.read = value, set[str]()

    def __getattr__(self, name: str) -> int:
        self.read.add(name)
        return self.value


def _probe_length(cls: type[Packet], fld: StrLenField) -> tuple[str, int]:
    """`length_from` as (field, n): the length is that field's value minus n, at least 0."""
    lows, highs = _Probe(100), _Probe(300)
    low, high = fld.length_from(lows), fld.length_from(highs)
    if len(lows.read) != 1 or high - low != 200:
        raise GeneratorError(f"{cls.__name__}.{fld.name}: length is no field minus a constant")
    return next(iter(lows.read)), 100 - low


# --- plans ------------------------------------------------------------------------------

_DIALECTS = list(Dialect)
_MINORS = range(0, FUSE_KERNEL_MINOR_VERSION + 1)


class _Plans:
    """Plans as Lua rules: which layer list a body holds, for which contexts."""

    def __init__(self, layers: _Collector) -> None:
        self.layers = layers
        self.plans: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}

    def plan(self, result: tuple[list[Any], str]) -> int:
        entries, reason = result
        lua: dict[str, Any] = {"reason": reason, "e": [self.entry(e) for e in entries],
                               "need": sum(struct_size(e) for e in _fixed_lead(entries))}
        key = repr(lua)
        if key not in self._ids:
            self._ids[key] = len(self.plans) + 1
            self.plans.append(lua)
        return self._ids[key]

    def entry(self, entry: Any) -> Any:
        if isinstance(entry, type):
            return self.layers.layer(entry)
        return self.chooser(entry)

    def chooser(self, fn: Callable[[Any, bytes], Any]) -> dict[str, Any]:
        """A plan entry chosen from the previous layer (IOCTL's tail): probe each bit of
        each field it reads."""
        base = _Probe(0)
        unset = fn(base, b"")
        if len(base.read) != 1 or not isinstance(unset, type):
            raise GeneratorError(f"plan entry {fn.__name__}: not one field of the previous layer")
        field = next(iter(base.read))
        mask, chosen = 0, None
        for bit in range(64):
            got = fn(_Probe(1 << bit), b"")
            if got is not unset:
                if chosen not in (None, got):
                    raise GeneratorError(f"plan entry {fn.__name__}: more than two outcomes")
                mask, chosen = mask | 1 << bit, got
        if chosen is None:
            return {"layer": self.layers.layer(unset)}
        return {"by": field, "mask": mask, "set": self.layers.layer(chosen),
                "unset": self.layers.layer(unset)}

    def rules(self, resolve: Callable[[FuseContext, bytes], tuple[list[Any], str]],
              reply_to: int | None = None) -> dict[str, Any]:
        """One opcode's plans over the contexts that change them."""
        def ctx(minor: int, flags: int, dialect: Dialect, request: Any = None) -> FuseContext:
            c = FuseContext(minor=minor, flags=flags, dialect=dialect, minor_known=True)
            return c.for_reply(reply_to, request) if reply_to is not None else c

        def context_free(request: Any, bodies: Iterable[bytes]) -> None:
            """Plans chosen by the body or the request must not depend on the connection
            too: the rules below cannot say both."""
            for body in bodies:
                seen = {repr(resolve(ctx(m, f, d, request), body)) for m in (0, 35, 45)
                        for f in (0, (1 << 64) - 1) for d in _DIALECTS}
                if len(seen) > 1:
                    raise GeneratorError("a plan depends on both the body and the connection")

        base = ctx(FUSE_KERNEL_MINOR_VERSION, 0, Dialect.NONE)
        by_len = {n: resolve(base, bytes(n)) for n in _LENGTHS}
        if len({repr(r[0]) for r in by_len.values() if r[0]}) > 1:
            # chosen by the body's length (INIT: each side sends its own minor's struct)
            context_free(None, (bytes(n) for n in _LENGTHS))
            steps, last = [], None
            for n, result in by_len.items():
                if result[0] and repr(result[0]) != last:
                    steps.append({"min": n, "p": self.plan(result)})
                    last = repr(result[0])
            return {"bylen": steps}
        if reply_to is not None:
            zero = resolve(ctx(FUSE_KERNEL_MINOR_VERSION, 0, Dialect.NONE, {"size": 0}), _PROBE_BODY)
            some = resolve(ctx(FUSE_KERNEL_MINOR_VERSION, 0, Dialect.NONE, {"size": 1}), _PROBE_BODY)
            if repr(zero) != repr(some):  # GETXATTR/LISTXATTR: size 0 asks for the size
                context_free({"size": 0}, [_PROBE_BODY])
                context_free({"size": 1}, [_PROBE_BODY])
                return {"size0": self.plan(zero), "sized": self.plan(some)}
        # which INIT flag bits change the plan (probed at the oldest and newest minor)
        mask = 0
        for bit in range(64):
            for minor in (0, FUSE_KERNEL_MINOR_VERSION):
                if repr(resolve(ctx(minor, 1 << bit, Dialect.NONE), _PROBE_BODY)) != repr(
                        resolve(ctx(minor, 0, Dialect.NONE), _PROBE_BODY)):
                    mask |= 1 << bit
        if bin(mask).count("1") > 2:
            raise GeneratorError("a plan depends on more than two INIT flag bits")
        bit_sets = sorted({b for b in _subsets(mask)})
        rules = []
        for dialect in _DIALECTS:
            for bits in bit_sets:
                lo, last = 0, None
                for minor in _MINORS:
                    pid = self.plan(resolve(ctx(minor, bits, dialect), _PROBE_BODY))
                    if last is not None and pid != last:
                        rules.append({"d": DIALECT_CODES[dialect], "b": bits, "lo": lo,
                                      "hi": minor - 1, "p": last})
                        lo = minor
                    last = pid
                rules.append({"d": DIALECT_CODES[dialect], "b": bits, "lo": lo,
                              "hi": FUSE_KERNEL_MINOR_VERSION, "p": last})
        return {"mask": mask, "rules": _merge_dialects(rules)}


def _subsets(mask: int) -> Iterable[int]:
    bits = [1 << i for i in range(64) if mask >> i & 1]
    for n in range(1 << len(bits)):
        yield sum(b for i, b in enumerate(bits) if n >> i & 1)


def _merge_dialects(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules that are the same for every dialect lose the dialect test."""
    key = lambda r: (r["b"], r["lo"], r["hi"], r["p"])  # noqa: E731
    by_dialect: dict[int, set[Any]] = {}
    for r in rules:
        by_dialect.setdefault(r["d"], set()).add(key(r))
    if len({frozenset(v) for v in by_dialect.values()}) == 1:
        seen: list[Any] = []
        out = []
        for r in rules:
            if key(r) not in seen:
                seen.append(key(r))
                out.append({k: v for k, v in r.items() if k != "d"})
        return out
    return rules


def _fixed_lead(entries: list[Any]) -> list[type[Packet]]:
    lead = []
    for e in entries:
        if not (isinstance(e, type) and issubclass(e, FuseStruct)):
            break
        lead.append(e)
    return lead


# --- the whole plugin -------------------------------------------------------------------

def _tables() -> dict[str, Any]:
    layers = _Collector()
    plans = _Plans(layers)
    requests = {int(op): plans.rules(lambda c, b, op=op: request_plan(c, op, 0, b))
                for op in Opcode}
    replies = {int(op): plans.rules(lambda c, b: reply_plan(c, 0, b), reply_to=int(op))
               for op in Opcode}
    extension = request_plan(FuseContext(), Opcode.DESTROY, 1, b"\0" * 8)[0]
    notifies = {int(code): plans.plan(notify_plan(code, _PROBE_BODY)) for code in NotifyCode}
    ioctls: dict[int, dict[str, Any]] = {}
    for cmd in DevIoctl:
        size = (cmd >> 16) & 0x3FFF
        entry: dict[str, Any] = {"size": size}
        for dialect in _DIALECTS:
            arg = dissect_ioctl_arg(cmd, bytes(size), dialect)
            how: dict[str, Any] = {"name": ioctl_name(cmd, dialect)}
            if isinstance(arg, FuseIoctlU32):
                how["u32"] = next(iter(ioctl_arg_fields(cmd, bytes(size), dialect)))
            elif not isinstance(arg, FuseIoctlRaw):
                how["l"] = layers.layer(type(arg))
            entry[DIALECT_CODES[dialect]] = how
        ioctls[int(cmd)] = entry
    u32_names = sorted({h["u32"] for e in ioctls.values() for d, h in e.items()
                        if isinstance(h, dict) and "u32" in h})
    return {
        "version": __version__, "encap_size": ENCAP_SIZE, "kinds": KIND_CODES,
        "notes": NOTE_BITS,
        "in_header": layers.layer(FuseInHeader), "out_header": layers.layer(FuseOutHeader),
        "raw": layers.layer(FuseRaw), "no_reply": sorted(int(op) for op in NO_REPLY_OPCODES),
        "in_size": IN_HEADER_SIZE, "out_size": OUT_HEADER_SIZE,
        "max_minor": FUSE_KERNEL_MINOR_VERSION,
        "extension": layers.layer(extension[-1]),
        "requests": requests, "replies": replies, "notifies": notifies, "plans": plans.plans,
        "opcodes": {int(op): op.name for op in Opcode},
        "notify_names": {int(c): f"NOTIFY_{c.name}" for c in NotifyCode},
        "ioctls": ioctls, "ioctl_u32": u32_names,
        "layers": layers.layers, "tables": layers.tables,
        "errnos": dict(errno.errorcode),
        "file_types": {int(k): v for k, v in fuse_fields.FILE_TYPES.items()},
        "accmodes": {int(k): v for k, v in fuse_fields.OPEN_ACCMODE.items()},
        "open_flags": [[v, n] for v, n in sorted(fuse_fields.OPEN_FLAGS.items())],
        "accmode_mask": os.O_ACCMODE, "s_ifmt": stat.S_IFMT(0o177777),
    }


_LUA_KEYWORDS = frozenset(
    "and break do else elseif end false for function goto if in local nil not or repeat "
    "return then true until while".split())


def lua(value: Any) -> str:
    """A Python value as a Lua literal (tables for dicts and lists, 1-based lists)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(1 << 53) < value < 1 << 53 else f'"{value}"'
    if isinstance(value, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\{ord(c):03d}"
                             for c in value) + '"'
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            key = f"[{k}]" if isinstance(k, int) else (
                k if re.fullmatch(r"[A-Za-z_]\w*", k) and k not in _LUA_KEYWORDS else f"[{lua(k)}]")
            parts.append(f"{key}={lua(v)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(lua(v) for v in value) + "}"
    raise GeneratorError(f"no Lua literal for {type(value).__name__}")


@lru_cache(maxsize=1)
def plugin_text() -> str:
    """The plugin's whole text: the generated tables, then the interpreter."""
    runtime = resources.files(__package__).joinpath("wireshark", "fuse.lua").read_text()
    head = (f"-- fusetrace {__version__}: Wireshark dissector for `fusetrace export --pcapng`.\n"
            "-- GENERATED from the Scapy dissectors (dissectors/structs.py, layouts.py,\n"
            "-- constants.py) by inspector/export/wireshark.py: do not edit; run\n"
            "-- `fusetrace wireshark-plugin` again after upgrading fusetrace.\n")
    return f"{head}local G = {lua(_tables())}\n\n{runtime}"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusetrace"


def plugin_path() -> Path:
    """The plugin in the cache, written again only when its text changed."""
    text = plugin_text()
    path = cache_dir() / PLUGIN_NAME
    try:
        if path.read_text() == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PLUGIN_NAME}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def personal_plugin_dir() -> Path:
    """Wireshark 4.x's personal plugin folder, where Lua plugins load at start."""
    return Path(os.path.expanduser("~")) / ".local" / "lib" / "wireshark" / "plugins"


def install() -> Path:
    target = personal_plugin_dir() / PLUGIN_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{PLUGIN_NAME}.{os.getpid()}")
    shutil.copyfile(plugin_path(), tmp)
    os.replace(tmp, target)
    return target
