"""`fusetrace fuzz` against real servers of the suite (bindfs, fuse-overlayfs, squashfuse):
each records a small session through a real mount (root and /dev/fuse needed), then is
fuzzed for MINUTES (all at once, one process each), and each finding is checked once more
with its saved command on a fresh server. Prints the servers' versions and the findings
that reproduced. Run:
.venv/bin/python bench/fuzz_real_servers.py [MINUTES] [OUT]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.testing import recorded_server  # noqa: E402

FUSETRACE = [sys.executable, "-m", "inspector.cli"]


def _tree(src: Path) -> None:
    (src / "dir").mkdir(parents=True)
    (src / "a").write_bytes(b"alpha" * 1000)
    (src / "dir" / "b").write_bytes(b"beta")
    os.symlink("a", src / "s")


def _rw(mnt: Path) -> None:
    os.stat(mnt / "a")
    (mnt / "a").read_bytes()
    os.statvfs(mnt)
    os.listdir(mnt)
    os.listdir(mnt / "dir")
    os.readlink(mnt / "s")
    os.mkdir(mnt / "d")
    (mnt / "d" / "f").write_bytes(b"x" * 100)
    os.rename(mnt / "d" / "f", mnt / "d" / "g")
    os.link(mnt / "d" / "g", mnt / "h")
    os.symlink("g", mnt / "d" / "t")
    os.chmod(mnt / "h", 0o600)
    os.truncate(mnt / "h", 10)
    os.unlink(mnt / "h")
    (mnt / "d" / "g").unlink()
    (mnt / "d" / "t").unlink()
    os.rmdir(mnt / "d")


def _ro(mnt: Path) -> None:
    os.stat(mnt / "a")
    (mnt / "a").read_bytes()
    (mnt / "dir" / "b").read_bytes()
    os.statvfs(mnt)
    os.listdir(mnt)
    os.listdir(mnt / "dir")
    os.readlink(mnt / "s")


def setups(base: Path) -> dict[str, tuple[list[str], Path, object]]:
    """name → (server argv, the directory --fresh restores, workload)."""
    out: dict[str, tuple[list[str], Path, object]] = {}
    if shutil.which("bindfs"):
        b = base / "bindfs"
        _tree(b / "state" / "src")
        out["bindfs"] = (["bindfs", "-f", str(b / "state" / "src"), str(b / "mnt")],
                         b / "state", _rw)
    if shutil.which("fuse-overlayfs"):
        b = base / "overlay"
        _tree(b / "state" / "lower")
        for d in ("upper", "work"):
            (b / "state" / d).mkdir()
        s = b / "state"
        out["fuse-overlayfs"] = (["fuse-overlayfs", "-f", "-o", f"lowerdir={s}/lower,upperdir="
                                  f"{s}/upper,workdir={s}/work", str(b / "mnt")], s, _rw)
    if shutil.which("squashfuse") and shutil.which("mksquashfs"):
        b = base / "squashfuse"
        _tree(b / "tree")
        (b / "state").mkdir(parents=True)
        subprocess.run(["mksquashfs", str(b / "tree"), str(b / "state" / "image.sqfs"),
                        "-quiet", "-noappend"], check=True)
        out["squashfuse"] = (["squashfuse", "-f", str(b / "state" / "image.sqfs"),
                              str(b / "mnt")], b / "state", _ro)
    return out


def version(name: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True,
                          text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "fuzz-real").resolve()
    base = out / "work"
    shutil.rmtree(base, ignore_errors=True)
    runs = {}
    for name, (argv, state, workload) in setups(base).items():
        mnt = Path(argv[-1])
        mnt.mkdir(parents=True)
        trace = base / f"{name}.fzt"
        pristine = state.with_name("pristine")
        shutil.copytree(state, pristine, symlinks=True)
        with recorded_server(argv, mnt, trace, "-s", "0") as rec:
            workload(mnt)  # type: ignore[operator]
            rec.unmount_and_wait()
        shutil.rmtree(state)
        os.rename(pristine, state)  # the fuzz starts from the tree as the recording did
        cmd = [*FUSETRACE, "fuzz", str(trace), "--seconds", str(minutes * 60), "--seed", "1",
               "--fresh", str(state), "-o", str(out / name), "--", *argv]
        runs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    for name, proc in runs.items():
        stdout, stderr = proc.communicate()
        print(f"== {name} {version(name)}: exit {proc.returncode}")
        print(stdout.strip())
        print(stderr.strip().splitlines()[-1] if stderr.strip() else "")


if __name__ == "__main__":
    main()
