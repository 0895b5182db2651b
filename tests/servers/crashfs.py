"""tests/servers/memfs.py, except that RMDIR kills the process (SIGABRT): a server that
crashes on one request, for `fusetrace replay` to report.

    python tests/servers/crashfs.py MOUNTPOINT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memfs  # noqa: E402  (a sibling script, not a package)


class CrashFS(memfs.MemFS):
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        os.abort()


if __name__ == "__main__":
    memfs.MemFS = CrashFS  # type: ignore[misc]  # main() builds the class by this name
    raise SystemExit(memfs.main())
