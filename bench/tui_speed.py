"""How fast `fusetrace browse` is on a big trace: first screen, a page of scrolling, the
jump to the end, following one id. Printed, never asserted.

    .venv/bin/python bench/tui_speed.py [--records N] [--keep DIR]

The trace is synthetic (`traces.testing.synthetic_trace`) and made in a temporary
directory unless --keep names one (then it is reused on the next run). Two views:
- in process, headless (Textual's test driver): the app's own work, the list's part of
  each step (model + rendering the visible rows) measured apart from Textual's repaint;
- the real `fusetrace browse` in tmux (when installed): from a key sent to the screen
  showing its effect, as a person sees it, Python's start-up included for the first screen.
Key presses through the test driver are not timed: it waits for idleness, which a
background analysis never gives it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual.pilot import Pilot  # noqa: E402

from traces.testing import synthetic_trace  # noqa: E402
from tui.app import BrowseApp  # noqa: E402
from tui.widgets import MessageList  # noqa: E402

SIZE = (160, 50)


async def until(pilot: Pilot[Any], done: Callable[[], bool], timeout: float = 600) -> float:
    """Seconds until `done()` holds, polling the app's loop."""
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the app did not get there")
        await pilot.pause(0.002)
    return time.perf_counter() - start


def painted(app: BrowseApp) -> bool:
    """The list has drawn a row (the first screen is up)."""
    model = app.model
    if model.known == 0 or not app.main.is_attached:
        return False
    messages = app.main.query_one(MessageList)
    return messages.size.height > 0 and messages.render_line(0).text.strip() != ""


def render_screen(messages: MessageList) -> None:
    for y in range(messages.size.height):
        messages.render_line(y)


async def measure(path: Path) -> dict[str, float]:
    """Each figure twice where it matters: the list's own work (model + rendering the
    visible rows) and a real key press through Textual, repaint of every pane included."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    app = BrowseApp(str(path))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.main.is_attached)
        out["app up (screen mounted, no rows yet)"] = time.perf_counter() - start
        await until(pilot, lambda: painted(app))
        out["first screen of rows"] = time.perf_counter() - start
        out["index complete"] = await until(pilot, lambda: app.model.complete) + out["first screen of rows"]
        messages = app.main.query_one(MessageList)
        model = app.model

        times = []
        for start_at in range(100_000, min(model.count, 900_000), 80_000):
            model.move_to(start_at)
            await pilot.pause()
            t = time.perf_counter()
            messages.action_page_down()
            render_screen(messages)  # rows not seen before: decoded now
            times.append(time.perf_counter() - t)
        out["page down, list only (cold rows), median"] = statistics.median(times)
        t = time.perf_counter()
        messages.action_last()
        render_screen(messages)
        out["jump to end (End/G), list only"] = time.perf_counter() - t

        out["lifecycle analysis (all ids), in the background"] = await until(
            pilot, lambda: model.analysis is not None, timeout=1200)
        life = next(lc for lc in model.analysis.lifecycles("backing")[1000:] if len(lc.events) > 2)  # type: ignore[union-attr]
        model.go_to_record(life.records[0])
        await pilot.pause()
        t = time.perf_counter()
        model.subjects(life.records[0])
        out["ids of one record (what f asks first)"] = time.perf_counter() - t
        t = time.perf_counter()
        model.follow("backing", life.key, life.records[0])
        render_screen(messages)
        out["follow one backing id, list only"] = time.perf_counter() - t
        t = time.perf_counter()
        model.step(1)
        render_screen(messages)
        out["n (next event), list only"] = time.perf_counter() - t
    return out


class Tmux:
    """The real `fusetrace browse` in a tmux pane, timed from key to screen."""

    def __init__(self, trace: Path, cache: Path) -> None:
        self.session = f"tui-bench-{os.getpid()}"
        command = (f"cd {Path(__file__).resolve().parent.parent} && env -u COLUMNS -u LINES "
                   f"XDG_CACHE_HOME={cache} {sys.executable} -m inspector.cli browse {trace}; "
                   "sleep 600")
        self.started = time.perf_counter()
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "160", "-y", "50",
                        command], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.session],
                              capture_output=True, text=True, check=True).stdout

    def wait(self, wanted: str, since: float, timeout: float = 600, status: bool = False) -> float:
        """Seconds from `since` until `wanted` shows (on the status line only, if `status`)."""
        while wanted not in (self.screen().split("\n", 1)[0] if status else self.screen()):
            if time.perf_counter() - since > timeout:
                raise TimeoutError(f"never showed {wanted!r}")
            time.sleep(0.01)
        return time.perf_counter() - since

    def key(self, keys: str, wanted: str, literal: bool = False, status: bool = True) -> float:
        t = time.perf_counter()
        subprocess.run(["tmux", "send-keys", "-t", self.session, *(["-l"] if literal else []), keys],
                       check=True)
        return self.wait(wanted, t, status=status)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


def in_tmux(trace: Path, cache: Path, records: int) -> dict[str, float]:
    out: dict[str, float] = {}
    pane = Tmux(trace, cache)
    try:
        out["launch to first screen of rows (python start-up included)"] = pane.wait(
            " -> INIT ", pane.started)
        out["End (G), analysis running in the background"] = pane.key("G", f"#{records - 1}")
        out["g back to the first"] = pane.key("g", "#0 ")
        out["lifecycle analysis done (status line)"] = pane.wait("anomal", pane.started, status=True)
        out["End (G) once the analysis is done"] = pane.key("G", f"#{records - 1}")
        pane.key("/", "Enter applies", status=False)
        time.sleep(0.3)
        pane.key("op=BACKING_OPEN", "op=BACKING_OPEN", literal=True, status=False)
        out["filter op=BACKING_OPEN (Enter to list)"] = pane.key("Enter", "filter [op=BACKING_OPEN]")
        out["f: follow its backing id"] = pane.key("f", "following backing id")
        out["n: next event"] = pane.key("n", "event 2/")
    finally:
        pane.close()
    return out


def import_time() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tui.app"], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="make (or reuse) the trace here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fusetrace-tui-bench-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        trace = where / f"synthetic-{args.records}.fzt"
        os.environ["XDG_CACHE_HOME"] = str(where / "cache")
        if not trace.exists():
            t = time.perf_counter()
            synthetic_trace(trace, args.records, seed=1)
            print(f"made {trace} ({trace.stat().st_size >> 20} MiB) in "
                  f"{time.perf_counter() - t:.1f} s")
        for cache in (trace.with_name(trace.name + ".idx"),):
            cache.unlink(missing_ok=True)
        print(f"python start-up + imports (child process): {import_time():.2f} s")
        for label in ("no index cache (built in the worker)", "index cache present"):
            show(f"{args.records:,} records, in process, {label}", asyncio.run(measure(trace)))
        if shutil.which("tmux"):
            show(f"{args.records:,} records, fusetrace browse in tmux, index cached",
                 in_tmux(trace, where / "cache", args.records))


def show(title: str, figures: dict[str, float]) -> None:
    print(f"\n{title}:")
    for name, seconds in figures.items():
        print(f"  {name:<58} {seconds * 1000:10.1f} ms")


if __name__ == "__main__":
    main()
