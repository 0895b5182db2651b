"""The C extensions: the trace appender (`traces/_append.c`; the recorder's loops append
through its C API, `traces/append.h`), the recorder's relay (`inspector/record/_fastpath.c`),
its seccomp trap's hot path (`inspector/exchange/_trapfast.c`), the trace index's hot loop
(`traces/_scan.c`) and the lifecycle pass's (`inspector/lifecycles/_pass.c`); everything
else is in pyproject.toml. They need gcc and python3-dev (.ci/install brings them) and
read the protocol's offsets and record kinds from `traces/facts.h` (generated from the
dissectors: `python -m traces.cfacts --write`).

Required where a C compiler is found: a build failure fails the install (and so CI).
`FUSETRACE_NO_C=1` in the environment opts out, as does a machine without a compiler (the
build says so): nothing is compiled, indexes and lifecycles are built in Python, and
`fusetrace record` says what is missing."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
_HEADERS = ["traces/le.h", "traces/facts.h", "traces/append.h"]
_SOURCES = {
    "traces._append": "traces/_append.c",
    "inspector.record._fastpath": "inspector/record/_fastpath.c",
    "inspector.exchange._trapfast": "inspector/exchange/_trapfast.c",
    "traces._scan": "traces/_scan.c",
    "inspector.lifecycles._pass": "inspector/lifecycles/_pass.c",
}


def _why_not() -> str | None:
    """Why the extensions are not built here, or None when they must be."""
    if os.environ.get("FUSETRACE_NO_C") == "1":
        return "FUSETRACE_NO_C=1"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(shlex.split(cc)[0]) is None:
        return f"no C compiler ({cc}) on PATH"
    return None


_SKIP = _why_not()
if _SKIP:
    print(f"fusetrace: not building the C extensions ({_SKIP})", file=sys.stderr)

setup(ext_modules=[] if _SKIP else [
    Extension(name, [source], depends=_HEADERS, extra_compile_args=_FLAGS)
    for name, source in _SOURCES.items()
])
