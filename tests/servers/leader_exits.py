"""The bundled passthroughfs with its main thread gone first, as Go servers can leave it.

    python tests/servers/leader_exits.py SOURCE MOUNTPOINT [passthroughfs options]

The server runs in a thread of its own; the main thread (the thread group's leader) ends
at once with pthread_exit, so /proc shows the process's leader as a zombie while its
other threads mount, serve and unmount. The serving thread ends the process with the
server's status. Signal handlers can only be installed from the main thread: there are
none (SIGTERM and SIGINT end the process as they would any).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from inspector.passthroughfs import cli
from inspector.passthroughfs.server import Server


def _serve(argv: list[str]) -> None:
    status = 1
    try:
        status = cli.main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    Server.install_signal_handlers = lambda self: None  # type: ignore[method-assign]
    threading.Thread(target=_serve, args=(sys.argv[1:],), name="server").start()
    ctypes.CDLL(None).pthread_exit(None)  # releases the GIL on the way out
