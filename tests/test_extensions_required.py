"""The C extensions are required where a compiler exists: a source that does not compile
fails `pip install` (and so CI) instead of installing the Python fallbacks quietly;
FUSETRACE_NO_C=1 opts out and builds nothing. Each case builds a wheel, as pip install
does (isolated build environment), from a copy of the checkout with one C file broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from c_extensions import compiler

REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "*.so",
                                      "__pycache__", ".pytest_cache", "*.idx", "*.fzt")


def _wheel(tmp_path: Path, broken: str,
           **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`pip wheel` of a copy of the checkout whose `broken` C file does not compile."""
    if compiler() is None:
        pytest.skip("no C compiler on PATH: the extensions are not built here")
    tree = tmp_path / "src"
    shutil.copytree(REPO, tree, ignore=_NOT_SOURCES)
    (tree / broken).write_text((tree / broken).read_text() + "\nthis is not C;\n")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                          str(tmp_path / "out"), str(tree)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **env})
    return out, tmp_path / "out"


@pytest.mark.timeout(600)
def test_a_source_that_does_not_compile_fails_the_install(tmp_path: Path) -> None:
    out, wheels = _wheel(tmp_path, "inspector/lifecycles/_pass.c")
    assert out.returncode != 0, out.stdout
    assert "_pass.c" in out.stdout + out.stderr
    assert not wheels.exists() or not list(wheels.glob("*.whl"))


@pytest.mark.timeout(600)
def test_the_documented_switch_opts_out(tmp_path: Path) -> None:
    out, wheels = _wheel(tmp_path, "traces/_scan.c", FUSETRACE_NO_C="1")
    assert out.returncode == 0, out.stdout + out.stderr
    [wheel] = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "traces/facts.h" in names and not [n for n in names if n.endswith(".so")]
