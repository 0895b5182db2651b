"""`python -m inspector.passthroughfs SOURCE MOUNTPOINT` (also `fusetrace passthroughfs`)."""

from __future__ import annotations

import sys

from .cli import run

sys.exit(run())
