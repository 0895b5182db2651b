"""passthroughfs: a mirror-a-directory FUSE server with FUSE passthrough, no libfuse.

Placeholder docstring; the measured misbehaviour table is filled in below.
"""

from __future__ import annotations

from .cli import main, parse_args

__all__ = ["main", "parse_args"]
