"""The C extensions: the trace appender (`traces/_append.c`; the recorder's loops append
through its C API, `traces/append.h`), the recorder's relay (`inspector/record/_fastpath.c`),
its seccomp trap's hot path (`inspector/record/_trapfast.c`), the trace index's hot loop
(`traces/_scan.c`) and the lifecycle pass's (`inspector/lifecycles/_pass.c`); everything
else is in pyproject.toml. They need gcc and python3-dev (.ci/install brings them) and are
optional: without them all but `fusetrace record` still installs, and indexes and
lifecycles are built in Python."""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(ext_modules=[
    Extension("traces._append", ["traces/_append.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("inspector.record._fastpath", ["inspector/record/_fastpath.c"], optional=True,
              extra_compile_args=_FLAGS),
    Extension("inspector.record._trapfast", ["inspector/record/_trapfast.c"], optional=True,
              extra_compile_args=_FLAGS),
    Extension("traces._scan", ["traces/_scan.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("inspector.lifecycles._pass", ["inspector/lifecycles/_pass.c"], optional=True,
              extra_compile_args=_FLAGS),
])
