"""`traces/facts.h` is what `traces.cfacts` makes from the dissectors and `traces.records`
now, and a C compiler reads from it the values Python has: the C side equals the Python
side, number by number, key by key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from c_extensions import compiler

from dissectors.offsets import IN_AT, IN_HEADER_SIZE, OUT_AT, OUT_HEADER_SIZE
from traces import Kind, cfacts
from traces.records import IOCTL_KEYS


def test_the_committed_header_is_current() -> None:
    assert cfacts.HEADER.read_text() == cfacts.render(), (
        "traces/facts.h is stale: run `python -m traces.cfacts --write` and rebuild")


def test_facts_are_the_dissectors_and_the_records() -> None:
    facts = cfacts.facts()
    assert facts["FT_IN_HEADER_SIZE"] == IN_HEADER_SIZE == 40
    assert facts["FT_OUT_HEADER_SIZE"] == OUT_HEADER_SIZE == 16
    assert {k: v for k, v in facts.items() if k.startswith("FT_IN_") and k.endswith("_AT")} == {
        f"FT_IN_{name.upper()}_AT": at for name, at in IN_AT.items()}
    assert (facts["FT_OUT_ERROR_AT"], facts["FT_OUT_UNIQUE_AT"]) == (OUT_AT["error"], OUT_AT["unique"])
    assert [facts[f"FT_KIND_{k.name}"] for k in Kind] == [int(k) for k in Kind]
    assert facts["FT_IOCTL_NKEYS"] == len(IOCTL_KEYS)


def test_a_compiler_reads_the_same_values(tmp_path: Path) -> None:
    cc = compiler()
    if cc is None:
        pytest.skip("no C compiler on PATH")
    facts = cfacts.facts()
    src = tmp_path / "facts.c"
    src.write_text("\n".join([
        "#include <stdio.h>",
        "#include <errno.h>",  # `errno` is a macro: the key list must survive it
        f'#include "{cfacts.HEADER}"',
        "#define KEY(k) puts(#k);",
        "int main(void) {",
        *(f'    printf("%s %llu\\n", "{name}", (unsigned long long)({name}));' for name in facts),
        "    FT_IOCTL_KEYS(KEY)",
        "    return 0;",
        "}", ""]))
    exe = tmp_path / "facts"
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), str(src)], check=True, timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=30)
    lines = out.stdout.splitlines()
    assert dict((name, int(v)) for name, v in (ln.split() for ln in lines[:len(facts)])) == facts
    assert tuple(lines[len(facts):]) == IOCTL_KEYS


def test_the_writer_writes_the_keys_in_that_order(tmp_path: Path) -> None:
    """The C trap writes an IOCTL record's map in IOCTL_KEYS' order; so must the writer."""
    from traces import TraceReader, TraceWriter

    path = tmp_path / "t.fzt"
    with TraceWriter(str(path)) as writer:
        writer.ioctl(cmd=1, arg=b"", note="extra keys go after")
    (rec,) = list(TraceReader(str(path)))
    assert list(rec.meta) == [*IOCTL_KEYS, "note"]
