"""The dissectors against the C header: struct sizes, member names, offsets and sizes.

At run time the system `<linux/fuse.h>` is parsed for every `struct fuse_*` / `struct cuse_*`,
a C program printing `sizeof`/`offsetof` of each is compiled with gcc and run, and its
numbers are compared with the Scapy classes. The dissectors speak 7.45; the installed
header may be older (Debian's linux-libc-dev 6.1 is 7.38), so members renamed since and
structs added since are listed here explicitly, each with why. Structs newer than the
installed header are checked against a literal table written from the 7.45 header.

Caveat: the C side is whatever the host compiler lays out (x86-64/arm64: no surprises; every
FUSE struct is naturally aligned and the protocol relies on that).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from dissectors.fields import AlignPadField
from scapy.packet import Packet

import dissectors.ioctls
import dissectors.structs
from dissectors.quick import compiled
from dissectors.structs import FuseStruct, struct_name

# --- what the dissectors say -----------------------------------------------------------

KERNEL_NAME = re.compile(r"^(fuse|cuse)_[a-z0-9_]+$")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int | None  # None: a flexible array member (`name[]`), offset only


def dissector_classes() -> dict[str, type[Packet]]:
    """Kernel struct name → class, for classes named exactly after a kernel struct.

    Compat variants ("fuse_init_out (7.22)", "fuse_open_out (android)") carry a suffix and
    are left out: they are the same struct at an older size, checked by the round trips.
    """
    found: dict[str, list[type[Packet]]] = {}
    for module in (dissectors.structs, dissectors.ioctls):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Packet) and obj.__module__ == module.__name__:
                name = struct_name(obj)
                if isinstance(name, str) and KERNEL_NAME.match(name):
                    found.setdefault(name, []).append(obj)
    dupes = {name: classes for name, classes in found.items() if len(classes) > 1}
    assert not dupes, f"two classes claim one kernel struct: {dupes}"
    return {name: classes[0] for name, classes in found.items()}


def _field_size(pkt: Packet, fld) -> int:
    value = fld.default if fld.default is not None else 0
    return len(fld.addfield(pkt, b"", value))


def dissector_layout(cls: type[Packet]) -> tuple[int, list[Member]]:
    """(size of the default packet, members) with offsets from building field by field.

    A variable field (alignment padding, a length-from string, a StrLenField) built from its
    empty default takes 0 bytes; it is reported with size None, like a C flexible member.
    """
    pkt = cls()
    members, offset = [], 0
    for fld in cls.fields_desc:
        size = _field_size(pkt, fld)
        variable = isinstance(fld, AlignPadField) or (
            type(fld).__name__ in {"StrLenField", "StrField"} and size == 0)
        members.append(Member(fld.name, offset, None if variable else size))
        offset += size
    total = len(bytes(pkt))
    assert total == offset, f"{cls.__name__}: fields add up to {offset}, bytes() gives {total}"
    return total, members


def test_layout_helper_agrees_with_quick_compiled() -> None:
    """Two independent ways of measuring a struct (build field by field, struct format)."""
    for name, cls in dissector_classes().items():
        if not issubclass(cls, FuseStruct):
            continue
        size, members = dissector_layout(cls)
        comp = compiled(cls)
        assert comp.st.size == size, name
        top = [n.split(".")[0] for n in comp.names]
        assert [m.name for m in members] == list(dict.fromkeys(top)), name


def test_kernel_names_are_set_on_every_struct_class() -> None:
    """A field called `name` once swallowed the class's `name` (Scapy metaclass): never again."""
    from dissectors.structs import FuseDirent, FuseName, FuseNames

    assert struct_name(FuseDirent) == "fuse_dirent"
    assert struct_name(FuseName) == "name" and struct_name(FuseNames) == "names"
    assert FuseDirent().getfieldval("name") == b""
    assert isinstance(FuseDirent.fields_desc[-1], AlignPadField)  # FUSE_DIRENT_ALIGN survives


# --- what the installed header says ------------------------------------------------------

#: Members of an older header that the 7.45 layout spells differently at the same bytes.
#: The dissector fields must tile the old member's bytes exactly.
RENAMED_SINCE: dict[tuple[str, str], str] = {
    ("fuse_open_out", "padding"): "renamed backing_id (int32_t) in 7.40 (Linux 6.9)",
    ("fuse_init_out", "unused"): (
        "uint32_t unused[7] became max_stack_depth (7.40, Linux 6.9), request_timeout "
        "(7.43, Linux 6.14) and uint16_t unused[11]"),
}

#: C members the dissector class has no field for, or fields with no C member.
DISSECTOR_EXTRAS: dict[tuple[str, str], str] = {
    ("fuse_ext_header", "data"): "the extension's payload (size - 8 bytes) follows the header",
    ("fuse_dirent", "padding"): "FUSE_DIRENT_ALIGN bytes after name[], kept as sent",
}


@dataclass(frozen=True)
class NewStruct:
    version: str  # protocol minor and the kernel release that added it
    size: int
    members: tuple[Member, ...]


def _m(*spec: tuple[str, int, int | None]) -> tuple[Member, ...]:
    return tuple(Member(*s) for s in spec)


#: Structs the dissectors have that Linux 6.1's linux-libc-dev (7.38) lacks, written out by
#: hand from the 7.45 header (libfuse's include/fuse_kernel.h) and checked with gcc against it.
NEWER_THAN_HEADER: dict[str, NewStruct] = {
    "fuse_sx_time": NewStruct("7.39 (Linux 6.6)", 16, _m(
        ("tv_sec", 0, 8), ("tv_nsec", 8, 4), ("__reserved", 12, 4))),
    "fuse_statx": NewStruct("7.39 (Linux 6.6)", 256, _m(
        ("mask", 0, 4), ("blksize", 4, 4), ("attributes", 8, 8), ("nlink", 16, 4),
        ("uid", 20, 4), ("gid", 24, 4), ("mode", 28, 2), ("__spare0", 30, 2), ("ino", 32, 8),
        ("size", 40, 8), ("blocks", 48, 8), ("attributes_mask", 56, 8), ("atime", 64, 16),
        ("btime", 80, 16), ("ctime", 96, 16), ("mtime", 112, 16), ("rdev_major", 128, 4),
        ("rdev_minor", 132, 4), ("dev_major", 136, 4), ("dev_minor", 140, 4),
        ("__spare2", 144, 112))),
    "fuse_statx_in": NewStruct("7.39 (Linux 6.6)", 24, _m(
        ("getattr_flags", 0, 4), ("reserved", 4, 4), ("fh", 8, 8), ("sx_flags", 16, 4),
        ("sx_mask", 20, 4))),
    "fuse_statx_out": NewStruct("7.39 (Linux 6.6)", 288, _m(
        ("attr_valid", 0, 8), ("attr_valid_nsec", 8, 4), ("flags", 12, 4), ("spare", 16, 16),
        ("stat", 32, 256))),
    "fuse_supp_groups": NewStruct("7.38 FUSE_EXT_GROUPS, added after Linux 6.1 without a minor bump", 4, _m(
        ("nr_groups", 0, 4), ("groups", 4, None))),
    "fuse_backing_map": NewStruct("7.40 (Linux 6.9)", 16, _m(
        ("fd", 0, 4), ("flags", 4, 4), ("padding", 8, 8))),
    "fuse_notify_prune_out": NewStruct("7.45 (Linux 6.18)", 16, _m(
        ("count", 0, 4), ("padding", 4, 4), ("spare", 8, 8))),
    "fuse_copy_file_range_out": NewStruct("7.45 (Linux 6.18)", 8, _m(("bytes_copied", 0, 8),)),
}

#: Structs of Android common kernels, in no mainline header.
NOT_MAINLINE: dict[str, NewStruct] = {
    # bionic libc/kernel/uapi/linux/fuse.h: { __u32 fd; __u32 len; void *vec; } (64-bit)
    "fuse_passthrough_out": NewStruct("Android FUSE_DEV_IOC_PASSTHROUGH_OPEN V0/V1", 16, _m(
        ("fd", 0, 4), ("len", 4, 4), ("vec", 8, 8))),
}

#: Header structs deliberately without a dissector: they never cross /dev/fuse.
NOT_DISSECTED: dict[str, str] = {
    "fuse_uring_ent_in_out": "io-uring ring entry (7.42, Linux 6.14), not a /dev/fuse message",
    "fuse_uring_req_header": "io-uring ring entry (7.42, Linux 6.14), not a /dev/fuse message",
    "fuse_uring_cmd_req": "io-uring SQE command area (7.42, Linux 6.14), not a /dev/fuse message",
}

STRUCT_RE = re.compile(r"\bstruct\s+((?:fuse|cuse)_\w+)\s*\{(.*?)\}\s*;", re.S)
MEMBER_RE = re.compile(r"^(?P<type>.+?)\s*\b(?P<name>\w+)\s*(?P<array>\[\s*\w*\s*\])?$")


def _preprocess(cc: str) -> tuple[Path, str]:
    """The header's path and its preprocessed text (comments gone, macros expanded)."""
    out = subprocess.run([cc, "-E", "-x", "c", "-"], input="#include <linux/fuse.h>\n",
                         capture_output=True, text=True, timeout=60)
    if out.returncode:
        pytest.skip(f"<linux/fuse.h> not available to {cc}: {out.stderr.strip()[:200]}")
    marker = re.search(r'^# \d+ "([^"]*/linux/fuse\.h)"', out.stdout, re.M)
    assert marker, "preprocessor output names no linux/fuse.h"
    path = Path(marker.group(1))
    own = []  # keep only the lines that come from fuse.h itself
    current = None
    for text in out.stdout.splitlines():
        if text.startswith("# "):
            m = re.match(r'# \d+ "([^"]*)"', text)
            current = m.group(1) if m else current
        elif current == str(path):
            own.append(text)
    return path, "\n".join(own)


def parse_structs(text: str) -> dict[str, list[tuple[str, bool]]]:
    """struct name → [(member, is_flexible)] in declaration order."""
    structs: dict[str, list[tuple[str, bool]]] = {}
    for match in STRUCT_RE.finditer(text):
        members = []
        for decl in match.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            m = MEMBER_RE.match(decl)
            assert m and "," not in decl, f"cannot parse member {decl!r} of {match.group(1)}"
            members.append((m.group("name"), (m.group("array") or "").replace(" ", "") == "[]"))
        structs[match.group(1)] = members
    return structs


def c_program(structs: dict[str, list[tuple[str, bool]]]) -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/fuse.h>",
        "#define MEMBER(s, m) printf(\"member %s %s %zu %zu\\n\", #s, #m, "
        "offsetof(struct s, m), sizeof(((struct s *)0)->m));",
        "#define FLEX(s, m) printf(\"member %s %s %zu -\\n\", #s, #m, offsetof(struct s, m));",
        "int main(void) {",
        '    printf("minor %d\\n", FUSE_KERNEL_MINOR_VERSION);',
    ]
    for name, members in structs.items():
        lines.append(f'    printf("struct %s %zu\\n", "{name}", sizeof(struct {name}));')
        for member, flexible in members:
            lines.append(f"    {'FLEX' if flexible else 'MEMBER'}({name}, {member})")
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@dataclass
class CLayout:
    minor: int
    path: Path
    sizes: dict[str, int]
    members: dict[str, list[Member]]


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> CLayout:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc) on PATH: cannot check the dissectors against <linux/fuse.h>")
    path, text = _preprocess(cc)
    structs = parse_structs(text)
    assert structs, f"no struct fuse_*/cuse_* found in {path}"
    tmp = tmp_path_factory.mktemp("c_header")
    (tmp / "layout.c").write_text(c_program(structs))
    build = subprocess.run([cc, "-std=gnu11", "-Wall", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp / "layout")], capture_output=True, text=True, timeout=60, check=True)
    layout = CLayout(0, path, {}, {})
    for row in run.stdout.splitlines():
        kind, *rest = row.split()
        if kind == "minor":
            layout.minor = int(rest[0])
        elif kind == "struct":
            layout.sizes[rest[0]] = int(rest[1])
            layout.members[rest[0]] = []
        else:
            struct, member, offset, size = rest
            layout.members[struct].append(Member(member, int(offset), None if size == "-" else int(size)))
    print(f"checked against {path} (protocol 7.{layout.minor}, {len(layout.sizes)} structs)")
    return layout


def compare(name: str, cls: type[Packet], size: int, c_members: list[Member],
            used: set[tuple[str, str]] | None = None) -> list[str]:
    """Differences between a dissector class and a C layout, each as a sentence.

    `used` collects the RENAMED_SINCE exceptions this comparison needed.
    """
    problems: list[str] = []
    total, fields = dissector_layout(cls)
    if total != size:
        problems.append(f"{name}: sizeof is {size}, {cls.__name__} builds {total} bytes")
    by_name = {f.name: f for f in fields}
    covered: set[str] = set()
    for cm in c_members:
        mine = by_name.get(cm.name)
        if cm.size is None:  # flexible array: same offset, or the class stops there
            if mine is not None:
                covered.add(mine.name)
                if mine.offset != cm.offset:
                    problems.append(f"{name}.{cm.name}[]: offset {cm.offset}, dissector {mine.offset}")
            elif total != cm.offset:
                problems.append(f"{name}.{cm.name}[] starts at {cm.offset}, the class ends at {total}")
            continue
        if mine is not None and (mine.offset, mine.size) == (cm.offset, cm.size):
            covered.add(mine.name)
            continue
        if (name, cm.name) in RENAMED_SINCE:
            if used is not None:
                used.add((name, cm.name))
            tiles = [f for f in fields if f.size and cm.offset <= f.offset < cm.offset + cm.size]
            end = cm.offset
            for f in tiles:
                if f.offset != end:
                    break
                end += f.size
            if not tiles or end != cm.offset + cm.size:
                problems.append(f"{name}.{cm.name} ({cm.offset}+{cm.size}) is not tiled by "
                                f"{[(f.name, f.offset, f.size) for f in tiles]}")
            covered.update(f.name for f in tiles)
            continue
        where = "missing" if mine is None else f"at {mine.offset}+{mine.size}"
        problems.append(f"{name}.{cm.name}: C has {cm.offset}+{cm.size}, dissector field {where}")
    for f in fields:
        if f.name not in covered and (name, f.name) not in DISSECTOR_EXTRAS:
            problems.append(f"{name}: dissector field {f.name} has no C member")
    return problems


def test_every_header_struct_has_a_dissector(c_layout: CLayout) -> None:
    classes = dissector_classes()
    missing = sorted(set(c_layout.sizes) - set(classes) - set(NOT_DISSECTED))
    assert not missing, f"structs of {c_layout.path} without a dissector class: {missing}"


def test_dissectors_match_header_layout(c_layout: CLayout) -> None:
    classes = dissector_classes()
    problems = []
    for name, size in sorted(c_layout.sizes.items()):
        if name in classes:
            problems += compare(name, classes[name], size, c_layout.members[name])
    assert not problems, "\n".join(problems)


def test_renamed_members_table_does_not_rot(c_layout: CLayout) -> None:
    """Before 7.40 every exception is needed; from 7.45 none is (the header spells it our way)."""
    classes = dissector_classes()
    used: set[tuple[str, str]] = set()
    for name, size in c_layout.sizes.items():
        if name in classes:
            compare(name, classes[name], size, c_layout.members[name], used)
    if c_layout.minor < 40:
        assert used == set(RENAMED_SINCE)
    if c_layout.minor >= 45:
        assert used == set()


def test_structs_missing_from_header_are_listed(c_layout: CLayout) -> None:
    classes = dissector_classes()
    unlisted = sorted(set(classes) - set(c_layout.sizes) - set(NEWER_THAN_HEADER) - set(NOT_MAINLINE))
    assert not unlisted, (
        f"dissector structs absent from {c_layout.path} (7.{c_layout.minor}) and from the "
        f"NEWER_THAN_HEADER table: {unlisted}")


def test_newer_table_matches_header_when_present(c_layout: CLayout) -> None:
    """On a host whose header already has a 'newer' struct, the literal table must agree."""
    for name, new in NEWER_THAN_HEADER.items():
        if name in c_layout.sizes:
            assert c_layout.sizes[name] == new.size, name
            assert tuple(c_layout.members[name]) == new.members, name


@pytest.mark.parametrize("name", sorted({**NEWER_THAN_HEADER, **NOT_MAINLINE}))
def test_structs_newer_than_the_header(name: str) -> None:
    """No compiler needed: the hand-written 7.45 (or Android) layout against the class."""
    new = {**NEWER_THAN_HEADER, **NOT_MAINLINE}[name]
    classes = dissector_classes()
    assert name in classes, f"{name} ({new.version}) has no dissector class"
    problems = compare(name, classes[name], new.size, list(new.members))
    assert not problems, "\n".join(problems)


def test_every_dissector_struct_is_accounted_for() -> None:
    """Without gcc: each kernel-named class is in some header we know of."""
    from_61 = {
        "fuse_attr", "fuse_kstatfs", "fuse_file_lock", "fuse_entry_out", "fuse_forget_in",
        "fuse_forget_one", "fuse_batch_forget_in", "fuse_getattr_in", "fuse_attr_out",
        "fuse_mknod_in", "fuse_mkdir_in", "fuse_rename_in", "fuse_rename2_in", "fuse_link_in",
        "fuse_setattr_in", "fuse_open_in", "fuse_create_in", "fuse_open_out", "fuse_release_in",
        "fuse_flush_in", "fuse_read_in", "fuse_write_in", "fuse_write_out", "fuse_statfs_out",
        "fuse_fsync_in", "fuse_setxattr_in", "fuse_getxattr_in", "fuse_getxattr_out",
        "fuse_lk_in", "fuse_lk_out", "fuse_access_in", "fuse_init_in", "fuse_init_out",
        "cuse_init_in", "cuse_init_out", "fuse_interrupt_in", "fuse_bmap_in", "fuse_bmap_out",
        "fuse_ioctl_in", "fuse_ioctl_iovec", "fuse_ioctl_out", "fuse_poll_in", "fuse_poll_out",
        "fuse_notify_poll_wakeup_out", "fuse_fallocate_in", "fuse_in_header", "fuse_out_header",
        "fuse_dirent", "fuse_direntplus", "fuse_notify_inval_inode_out",
        "fuse_notify_inval_entry_out", "fuse_notify_delete_out", "fuse_notify_store_out",
        "fuse_notify_retrieve_out", "fuse_notify_retrieve_in", "fuse_lseek_in", "fuse_lseek_out",
        "fuse_copy_file_range_in", "fuse_setupmapping_in", "fuse_removemapping_in",
        "fuse_removemapping_one", "fuse_syncfs_in", "fuse_secctx", "fuse_secctx_header",
        "fuse_ext_header",
    }
    known = from_61 | set(NEWER_THAN_HEADER) | set(NOT_MAINLINE)
    classes = dissector_classes()
    assert sorted(set(classes) - known) == []
    assert sorted(known - set(classes)) == []
