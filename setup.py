"""The recorder's C extension (`inspector/record/_fastpath.c`); everything else is in
pyproject.toml. It needs gcc and python3-dev (.ci/install brings them) and is optional:
without them all but `fusetrace record` still installs."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "inspector.record._fastpath", ["inspector/record/_fastpath.c"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers"])])
