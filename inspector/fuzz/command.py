"""`fusetrace fuzz`: the command line around `fuzz()`. Exit 1 when something was found."""

from __future__ import annotations

import argparse
import sys

from traces import TraceReadError

from ..exchange.args import server_after_dashes
from .run import fuzz


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fz = sub.add_parser(
        "fuzz", help="send a server mutated recorded requests; save each crash, hang or bad reply",
        usage="fusetrace fuzz TRACE [--seconds S] [--seed N] [-o DIR] -- SERVER [ARGS...]",
        description="Replays recorded exchanges with one request field mutated (node ids and "
                    "handles handed out, stale or 0; edge names; boundary offsets and sizes; "
                    "open flags; FORGET counts) and reports crashes, hangs and replies the "
                    "kernel would reject (wrong size for the opcode, errno out of range). Each "
                    "finding is reduced and saved to DIR with a one-line description and the "
                    "command that replays it. Deterministic for a seed.")
    fz.add_argument("trace", metavar="TRACE")
    fz.add_argument("--seconds", type=float, default=60.0, metavar="S")
    fz.add_argument("--seed", type=int, default=0, metavar="N")
    fz.add_argument("-o", "--output", default="fuzz-findings", metavar="DIR")
    fz.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                    help="per request before the server counts as hanging (default %(default)s)")
    fz.add_argument("server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    fz.set_defaults(run=run, fuzz_parser=fz)


def run(args: argparse.Namespace) -> int:
    server = server_after_dashes(args, args.fuzz_parser)
    if not server or args.seconds <= 0 or args.timeout <= 0:
        print("fusetrace: error: want TRACE [--seconds S > 0] -- SERVER [ARGS...]",
              file=sys.stderr)
        return 2
    try:
        found = fuzz(args.trace, server, args.output, seconds=args.seconds, seed=args.seed,
                     timeout=args.timeout)
    except (TraceReadError, OSError) as exc:
        text = str(exc)
        print(f"fusetrace: error: {text if args.trace in text else f'{args.trace}: {text}'}",
              file=sys.stderr)
        return 2
    for f in found:
        print(f"{f.trace}: {f.what} (after {f.tries} requests)")
    print(f"{len(found)} finding{'s' if len(found) != 1 else ''} in {args.output}")
    return 1 if found else 0
