"""Each protocol fact is written once, in `dissectors/` (or what is generated from it:
`traces/facts.h`), and nowhere else: this scans the rest of the tree for the forms a copy
takes. Python: sets of opcodes, struct formats of structs that carry ids, opcode and
record-kind numbers compared with literals, byte slices and struct formats at header
fields, `*_AT` offsets from literals, errno and root-node numbers as literals, imports of
the test helpers or of another module's private names. C: record kinds and header sizes or
offsets as literals, a 256-byte path buffer. And no import circle in `dissectors/` or
`traces/`.

Files still being reworked by others are listed in PENDING with their owner; the list
only shrinks (a listed file that is clean fails the test, so the entry is removed).
"""

from __future__ import annotations

import ast
import errno
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pytest

from dissectors.ids import ID_FIELDS
from dissectors.offsets import IN_HEADER_SIZE, OUT_HEADER_SIZE, field_offsets
from dissectors.structs import FuseInHeader, FuseOutHeader, struct_name

REPO = Path(__file__).resolve().parents[2]
#: what is scanned: everything shipped or run but the dissectors themselves
PYTHON = ("inspector", "traces", "tui", "bench")
C_FILES = ("traces/_scan.c", "inspector/lifecycles/_pass.c", "inspector/exchange/_trapfast.c",
           "inspector/record/_fastpath.c")
#: file → who is reworking it (issue 22); each gets its facts from dissectors/ there
PENDING: dict[str, str] = {}
_IN = {(at, code[-1].upper()) for at, code in field_offsets(FuseInHeader).values()}
_OUT = {(at, code[-1].upper()) for at, code in field_offsets(FuseOutHeader).values()}
_SPANS = {(at, at + struct.calcsize(code)) for cls in (FuseInHeader, FuseOutHeader)
          for at, code in field_offsets(cls).values()}
_SIZES = {IN_HEADER_SIZE, OUT_HEADER_SIZE}
#: kept importable from dissectors.constants (computed) until PENDING is empty, then dropped
_SIZE_NAMES = {"IN_HEADER_SIZE", "OUT_HEADER_SIZE"}
_ERRNO_NAMES = set(errno.errorcode.values())
_STRUCT_CALLS = {"Struct", "unpack", "unpack_from", "pack", "pack_into", "calcsize", "iter_unpack"}
#: names of values that hold a message, whose slices are header fields
_MESSAGE = re.compile(r"raw|reply|request|msg|message|buf|init|head|data|body|arg", re.I)


def _layout(fmt: str, shift: int, signed: bool = False) -> list[tuple[int, str]] | None:
    """(offset, code) of each value a struct format reads, or None when it is no format;
    `signed` keeps the codes' case (whether a value is signed tells structs apart)."""
    try:
        struct.calcsize(fmt)
    except struct.error:
        return None
    at, out = shift, []
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.lstrip("<>=!@")):
        n = int(count or 1)
        if code in "xs":
            at += n
            continue
        for _ in range(n):
            out.append((at, code if signed else code.upper()))
            at += struct.calcsize("<" + code)
    return out


def _header_format(fmt: str, shift: int) -> bool:
    """A format that reads header fields at their offsets: three or more, or `unique`."""
    lay = _layout(fmt, shift)
    if not lay or len(lay) < 2 or not (set(lay) <= _IN or set(lay) <= _OUT):
        return False
    return len(lay) >= 3 or any(at == 8 for at, _ in lay)


def _id_struct_prefixes() -> dict[tuple[tuple[int, str], ...], str]:
    """The leading three or more fields of each struct with ids, as `_layout` gives them
    → the structs' names."""
    names: dict[tuple[tuple[int, str], ...], set[str]] = {}
    for idf in ID_FIELDS:
        lay = [(at, code[-1]) for at, code in field_offsets(idf.struct).values()
               if code[-1] != "s"]
        for n in range(3, len(lay) + 1):
            names.setdefault(tuple(lay[:n]), set()).add(struct_name(idf.struct))
    return {lay: " or ".join(sorted(n)) for lay, n in names.items()}


_ID_STRUCTS = _id_struct_prefixes()


def _int(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def python_findings(path: Path, rel: str) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    opcode = {"Opcode"} | {t.id for n in ast.walk(tree)
                           if isinstance(n, ast.Assign) and _name(n.value) == "Opcode"
                           for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
            ops = [e for e in node.elts if isinstance(e, ast.Attribute)
                   and isinstance(e.value, ast.Name) and e.value.id in opcode]
            if len(ops) >= 2:
                yield line, "a set of opcodes"
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice) \
                and _MESSAGE.search(_name(node.value)):
            lo, hi = _int(node.slice.lower), _int(node.slice.upper)
            if (lo, hi) in _SPANS or (node.slice.lower is None and hi in _SIZES) \
                    or (node.slice.upper is None and lo in _SIZES):
                yield line, f"a slice [{lo}:{hi}] of a header"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.endswith("_AT") and any(
                        _int(n) for n in ast.walk(node.value)):
                    yield line, f"an offset {target.id} from a literal"
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for name, value in zip(names, values):
                    if not isinstance(name, ast.Name) or _int(value) is None:
                        continue
                    bare = name.id.lstrip("_")
                    if bare in _ERRNO_NAMES or bare == "ROOT":
                        yield line, f"{name.id} = {_int(value)} instead of its name"
        elif isinstance(node, ast.Call) and _name(node.func) in _STRUCT_CALLS and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            shift = _int(node.args[2]) if len(node.args) >= 3 else 0
            fmt = node.args[0].value
            if _header_format(fmt, shift or 0):
                yield line, f"header format {fmt!r}"
            elif (lay := tuple(_layout(fmt, 0, signed=True) or ())) in _ID_STRUCTS:
                yield line, f"the layout of {_ID_STRUCTS[lay]}"
        elif isinstance(node, ast.Compare) and len(node.comparators) == 1:
            for a, b in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
                n, value = _name(a).lower(), _int(b)
                if not value:
                    continue
                if n in ("opcode", "op"):
                    yield line, f"opcode {value} as a number"
                elif "kind" in n and value in (1, 2, 3, 4):
                    yield line, f"record kind {value} as a number"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[-1] == "testing" and not rel.startswith("bench/") \
                    and not rel.endswith(("testing.py", "pytest_plugin.py")):
                yield line, f"imports the test helpers {node.module}"
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield line, f"imports {node.module}'s private {alias.name}"
                elif node.module == "dissectors.constants" and alias.name in _SIZE_NAMES:
                    yield line, f"imports {alias.name} from the constants' alias"


_C_PATTERNS = {
    r"\bkind\w*\s*[!=<>]=?\s*[1-4]\b|\bkd\s*[!=<>]=?\s*[1-4]\b": "a record kind as a number",
    r"#define\s+\w*KIND\w*\s+\d": "a record kind defined by hand",
    r"#define\s+\w*(?:IN|OUT)_HEADER\w*\s+\d": "a header size defined by hand",
    r"get_u(?:32|64)\(\s*\w+\s*\+\s*\d+\s*\)": "a header field read at a literal offset",
    r"\[\s*256\s*\]\s*=\s*\"\"": "a path buffer of 256 bytes",
}


def c_findings(path: Path) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(path.read_text().splitlines(), 1):
        for pattern, what in _C_PATTERNS.items():
            if re.search(pattern, text):
                yield number, what


@lru_cache(maxsize=1)
def findings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for top in PYTHON:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, what in python_findings(path, rel):
                out.setdefault(rel, []).append(f"{rel}:{line}: {what}")
    for rel in C_FILES:
        for line, what in c_findings(REPO / rel):
            out.setdefault(rel, []).append(f"{rel}:{line}: {what}")
    return out


def test_no_protocol_fact_outside_the_dissectors() -> None:
    found = findings()
    copies = [line for rel, lines in found.items() if rel not in PENDING for line in lines]
    assert not copies, "declared outside dissectors/ (derive it from there):\n" + "\n".join(copies)


def test_the_pending_list_only_shrinks() -> None:
    found = findings()
    clean = sorted(rel for rel in PENDING if rel not in found)
    assert not clean, f"no longer copying protocol facts, remove from PENDING: {clean}"


@pytest.mark.parametrize("source, found", [
    ("x = frozenset({Opcode.OPEN, Opcode.CREATE})", "a set of opcodes"),
    ("O = Opcode\nif op in (O.OPEN, O.OPENDIR): pass", "a set of opcodes"),
    ("unique = int.from_bytes(raw[8:16], 'little')", "a slice [8:16] of a header"),
    ("body = reply[16:]", "a slice [16:None] of a header"),
    ("_PID_AT = 32", "an offset _PID_AT from a literal"),
    ("_FLAGS_AT = IN_HEADER_SIZE + 12", "an offset _FLAGS_AT from a literal"),
    ("_ENOENT, _EACCES = 2, 13", "_ENOENT = 2 instead of its name"),
    ("ROOT = 1", "ROOT = 1 instead of its name"),
    ("S = struct.Struct('<4xIQQ')", "header format '<4xIQQ'"),
    ("S = struct.Struct('<IiQ')", "header format '<IiQ'"),
    ("_OPEN_OUT = struct.Struct('<QIi')", "the layout of fuse_open_out"),
    ("_DIRENT = struct.Struct('<QQII')", "the layout of fuse_dirent"),
    ("a, b = S.unpack_from(raw, 4)\nT = struct.unpack_from('<IQ', raw, 4)", "header format '<IQ'"),
    ("if opcode == 26: pass", "opcode 26 as a number"),
    ("if kind == 3: pass", "record kind 3 as a number"),
    ("from inspector.testing import recorded_server", "imports the test helpers inspector.testing"),
    ("from dissectors.session import _Pending", "imports dissectors.session's private _Pending"),
    ("from dissectors.constants import IN_HEADER_SIZE", "imports IN_HEADER_SIZE from the constants"),
])
def test_the_scan_sees_each_form(tmp_path: Path, source: str, found: str) -> None:
    """Each form a copy took in the tree before (issue 22) is found."""
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert any(found in what for _, what in python_findings(path, "inspector/m.py"))


def test_the_scan_sees_c_copies(tmp_path: Path) -> None:
    path = tmp_path / "m.c"
    path.write_text("#define KIND_IOCTL 3\n#define IN_HEADER 40\n"
                    "if (kind == 1) x = get_u64(p + 8);\nchar link[80], path[256] = \"\";\n")
    assert {what for _, what in c_findings(path)} == set(_C_PATTERNS.values())


def _imports(path: Path) -> set[str]:
    """The sibling modules a package's module imports when it runs, at any depth of its
    code (`from .x import y` and `from . import x`; not those for type checkers only)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update([node.module] if node.module else [a.name for a in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


@pytest.mark.parametrize("package", ["dissectors", "traces"])
def test_no_import_circle_in_the_package(package: str) -> None:
    graph = {p.stem: _imports(p) for p in (REPO / package).glob("*.py")}

    def reach(start: str, node: str, seen: set[str]) -> bool:
        for nxt in graph.get(node, ()):
            if nxt == start or (nxt not in seen and reach(start, nxt, seen | {nxt})):
                return True
        return False

    circles = sorted(m for m in graph if reach(m, m, {m}))
    assert not circles, f"modules of {package}/ in an import circle: {circles}"
