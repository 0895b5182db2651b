"""`python -m inspector.passthroughfs SOURCE MOUNTPOINT`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
