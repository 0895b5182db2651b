"""The C extensions in tests: required where a compiler exists, as in setup.py.

A test of a C path calls `c_extension(name)`: the module when it is built; when it is not,
the test fails (the install should have built it) unless the build was opted out with
FUSETRACE_NO_C=1 or there is no C compiler, and then it skips saying so. `Taken` wraps a
C entry point to count what it did, so a differential test can assert that the C side,
not only its Python twin, handled records.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import sysconfig
from types import ModuleType
from typing import Any, Callable

import pytest


def compiler() -> str | None:
    """The C compiler setup.py builds with (CC, else Python's), when it is on PATH."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(cc)[0])


def _why_not() -> str | None:
    """Why the extensions may be missing here (setup.py's rule), or None when they must not."""
    if os.environ.get("FUSETRACE_NO_C") == "1":
        return "FUSETRACE_NO_C=1"
    return None if compiler() else "no C compiler on PATH"


def c_extension(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = _why_not()
        if why:
            pytest.skip(f"{name} is not built ({why})", allow_module_level=True)
        pytest.fail(f"{name} is not built although a C compiler is here ({exc}): "
                    "`pip install -e .` builds it; FUSETRACE_NO_C=1 opts out", pytrace=False)


class Taken:
    """A C function wrapped to add up `measure(args, result)` over its calls."""

    def __init__(self, fn: Callable[..., Any],
                 measure: Callable[[tuple[Any, ...], Any], int]) -> None:
        self.fn, self.measure, self.total, self.calls = fn, measure, 0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.fn(*args, **kwargs)
        self.calls += 1
        self.total += self.measure(args, result)
        return result
