"""`python -m inspector.passthroughfs SOURCE MOUNTPOINT`."""

from __future__ import annotations

import signal
import sys

from .cli import main

status = main()
# The session is over; a late SIGTERM (a test's cleanup racing our own exit) must not
# turn a clean exit into -15. Ignored signals stay ignored through interpreter shutdown.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(status)
