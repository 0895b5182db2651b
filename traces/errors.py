"""The one exception that leaves `traces`: callers catch a single type for any bad input."""

from __future__ import annotations


class TraceReadError(Exception):
    """A file could not be read as a trace; the message names the path (and byte offset)."""
