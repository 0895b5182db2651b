"""`fusetrace fuzz`: the command line around `fuzz()`, and `--check` for one finding.

Exit status: 0 when nothing was found (or, with --check, the trace does not fail), 1 when
something was (or it does), 2 on an error: a bad trace or command line, a server that
cannot be started or does not answer INIT.
"""

from __future__ import annotations

import argparse
import json
import sys

from traces import TraceReader, TraceReadError

from ..exchange.args import server_after_dashes
from ..target.live import names
from ..target.play import StartError, play
from .run import Finding, Fuzzer


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fz = sub.add_parser(
        "fuzz", help="stream mutated recorded requests to a live server; save each failure "
                     "that reproduces",
        usage="fusetrace fuzz TRACE [--seconds S] [--tries N] [--seed N] [--jobs N] [-o DIR] "
              "[--fresh DIR] [--hostile] [--timeout S] -- SERVER [ARGS...]\n"
              "       fusetrace fuzz FINDING.fzt --check [--json] [--fresh DIR] -- SERVER [ARGS...]",
        description="Starts SERVER as `fusetrace replay` does (nothing mounted), plays TRACE to it "
                    "once, then keeps it running and streams tries: recorded requests rewritten "
                    "to the live session's node ids and handles, each mutated (ids, names at the "
                    "kernel's limits, integer fields at their boundaries, FORGET counts, overlap "
                    "and INTERRUPT). A failure (the server exits or is killed, gives no reply in "
                    "time, or sends a reply the kernel refuses) is confirmed on a fresh idle "
                    "server, reduced, saved to DIR with the command that checks it, and kept only "
                    "when that command reproduces it. Tries that show a new (opcode, errno, reply "
                    "size) or a new server log line join the corpus that later tries mutate.")
    fz.add_argument("trace", metavar="TRACE", help="the recorded session (.fzt) to start from; "
                                                   "with --check, a saved finding")
    fz.add_argument("--seconds", type=float, default=60.0, metavar="S",
                    help="how long to fuzz (default %(default)s)")
    fz.add_argument("--tries", type=int, default=None, metavar="N",
                    help="stop after N tries (all workers together)")
    fz.add_argument("--seed", type=int, default=0, metavar="N",
                    help="the random seed: the same seed makes the same tries with one worker")
    fz.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="workers, each with its own server (default %(default)s)")
    fz.add_argument("-o", "--output", default="fuzz-findings", metavar="DIR",
                    help="where findings go: finding-N.fzt and finding-N.txt (default %(default)s)")
    fz.add_argument("--fresh", metavar="DIR",
                    help="a directory the server changes, named by SERVER's arguments (as one, "
                         "or inside one: -o upperdir=DIR/upper): every server start gets a "
                         "pristine copy of it in its place (DIR itself is never written; "
                         "needed for --jobs > 1 to keep workers apart)")
    fz.add_argument("--hostile", action="store_true",
                    help="also send what no kernel sends (ids never handed out or dropped, 0, "
                         "empty names, '.', '..', '/', over-long names, over-FORGETs)")
    fz.add_argument("--timeout", type=float, default=1.0, metavar="S",
                    help="a reply slower than this (and than 10 x the p99 reply time) makes a "
                         "try a suspected hang, confirmed with at least 5 s (default %(default)s)")
    fz.add_argument("--mountpoint", metavar="PATH",
                    help="which of SERVER's arguments is the mountpoint, when the guess is wrong")
    fz.add_argument("--check", action="store_true",
                    help="play TRACE (a finding) once to a fresh SERVER: exit 1 and the verdict "
                         "when it fails, 0 when it does not")
    fz.add_argument("--json", action="store_true", help="with --check: the verdict as JSON")
    fz.add_argument("server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    fz.set_defaults(run=run, fuzz_parser=fz)


def run(args: argparse.Namespace) -> int:
    server = server_after_dashes(args, args.fuzz_parser)
    problem = _problem(args, server)
    if problem:
        return _fail(problem)
    try:
        _whole(args.trace)
        if args.check:
            return _check(args, server)
        found = _fuzz(args, server)
    except (TraceReadError, StartError, ValueError, OSError) as exc:
        text = str(exc)
        return _fail(text if args.trace in text else f"{args.trace}: {text}")
    for f in found:
        print(f"{f.trace}: {f.outcome.text()}\n    found by {f.mutation}\n    check: {f.command}")
    print(f"{len(found)} finding{'s' if len(found) != 1 else ''} in {args.output}")
    return 1 if found else 0


def _whole(trace: str) -> None:
    """The damaged-trace rule (inspector.damaged): fuzzing plays the session, all of it."""
    with TraceReader(trace) as reader:
        for _ in reader.arrays():
            pass
        if reader.tail:
            raise TraceReadError(f"{trace}: {reader.tail}; fuzzing needs the whole trace")


def _problem(args: argparse.Namespace, server: list[str]) -> str | None:
    if not server:
        return "want TRACE [options] -- SERVER [ARGS...]"
    if args.seconds <= 0 or args.timeout <= 0:
        return "--seconds and --timeout must be more than 0"
    if args.jobs < 1 or (args.tries is not None and args.tries < 1):
        return "--jobs and --tries must be at least 1"
    if args.fresh is not None and not names(server, args.fresh):
        return f"--fresh {args.fresh}: SERVER's arguments do not name it"
    return None


def _check(args: argparse.Namespace, server: list[str]) -> int:
    outcome = play(args.trace, server, timeout=max(args.timeout, 5.0), fresh=args.fresh,
                   mountpoint=args.mountpoint)
    if args.json:
        print(json.dumps(outcome.json() if outcome else None))
    else:
        print(outcome.text() if outcome else "no failure: the server handled every request")
    return 1 if outcome else 0


def _fuzz(args: argparse.Namespace, server: list[str]) -> list[Finding]:
    from rich.console import Console
    from rich.live import Live

    fz = Fuzzer(args.trace, server, args.output, seed=args.seed, jobs=args.jobs,
                timeout=args.timeout, fresh=args.fresh, hostile=args.hostile,
                mountpoint=args.mountpoint)
    console = Console(stderr=True)
    with Live(console=console, auto_refresh=False, transient=True,
              redirect_stdout=False) as live:
        found = fz.run(args.seconds, args.tries,
                       lambda stats: live.update(f"fuzz: {stats.line()}", refresh=True))
    print(f"fuzz: {fz.stats.line()}", file=sys.stderr)
    return found


def _fail(message: str) -> int:
    print(f"fusetrace: error: {message}", file=sys.stderr)
    return 2
