"""`fusetrace reduce`: the command line around `reduce_trace()`.

Exit status: 0 when a smaller (or equal) failing trace was written, 2 on bad input, a
server that cannot be started or does not answer INIT, or a trace whose replay does not
fail.
"""

from __future__ import annotations

import argparse
import os
import sys

from traces import TraceReadError

from ..exchange.args import server_after_dashes
from ..target.live import names
from ..target.play import StartError
from .ddmin import NotFailing, reduce_trace
from .signature import Selector


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    red = sub.add_parser(
        "reduce", help="shrink a trace whose replay fails to the fewest messages failing the same way",
        usage="fusetrace reduce TRACE -o SMALL.fzt [--keep FILTER] [--jobs N] [--timeout S] "
              "[--fresh DIR] -- SERVER [ARGS...]",
        description="Delta debugging over the trace's exchanges (INIT, the session's events and "
                    "the replies that handed out the node ids and handles kept requests use "
                    "always stay): replays candidates against SERVER and keeps the smallest "
                    "that fails the same way: killed by the same signal, exited with the same status, "
                    "hung, or a reply the kernel refuses for the same reason, in the same opcode "
                    "(or, with --keep, a difference in the same fields of a message the filter "
                    "selects). Ctrl-C leaves the smallest found so far in SMALL.fzt. Exit 2 when "
                    "the server cannot be started or the trace does not fail.")
    red.add_argument("trace", metavar="TRACE", help="the trace whose replay fails (.fzt)")
    red.add_argument("-o", "--output", metavar="SMALL.fzt", help="where the reduced trace goes")
    red.add_argument("--keep", metavar="FILTER",
                     help="the failure is a difference in a record this filter selects "
                          "(the filter language of `fusetrace show`, e.g. 'op=READDIR and err')")
    red.add_argument("--jobs", type=int, default=1, metavar="N", help="replays run at once")
    red.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                     help="per request before the server counts as hanging (default %(default)s)")
    red.add_argument("--fresh", metavar="DIR",
                     help="a directory SERVER's arguments name (as one, or inside one: -o "
                          "upperdir=DIR/upper) is copied afresh for every replay (a server "
                          "that changes its source directory)")
    red.add_argument("server", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    red.set_defaults(run=run, reduce_parser=red)


def _selector(text: str) -> Selector:
    from inspector.query import QueryContext, parse
    from traces import TraceIndex

    query = parse(text)  # QueryError (a ValueError) on a bad filter

    def chosen(path: str) -> set[int]:
        idx = TraceIndex.open(path)
        try:
            return set(query.select(QueryContext(idx)))
        finally:
            close = getattr(idx, "close", None)
            if close is not None:
                close()
    return chosen


def run(args: argparse.Namespace) -> int:
    server = server_after_dashes(args, args.reduce_parser)
    if not server or not args.output:
        return _fail("want TRACE -o SMALL.fzt -- SERVER [ARGS...]")
    if args.jobs < 1 or args.timeout <= 0:
        return _fail("--jobs must be at least 1 and --timeout more than 0")
    if args.fresh is not None and not names(server, args.fresh):
        return _fail(f"--fresh {args.fresh}: SERVER's arguments do not name it")
    try:
        keep = _selector(args.keep) if args.keep else None
    except ValueError as exc:
        return _fail(f"--keep: {exc}")
    from rich.progress import Progress, TextColumn

    try:
        with Progress(TextColumn("reducing: {task.fields[replays]} replays, smallest "
                                 "{task.fields[size]} messages"),
                      disable=not sys.stderr.isatty(), transient=True) as bar:
            task = bar.add_task("reduce", total=None, replays=0, size="?")
            result = reduce_trace(args.trace, args.output, server, keep=keep, jobs=args.jobs,
                                  timeout=args.timeout, fresh=args.fresh,
                                  progress=lambda r, m: bar.update(task, replays=r, size=m))
    except (TraceReadError, NotFailing, StartError, OSError) as exc:
        text = str(exc)
        return _fail(text if args.trace in text else f"{args.trace}: {text}")
    how = " (interrupted: the smallest so far)" if result.interrupted else ""
    print(f"{os.fspath(args.output)}: {result.messages} of {result.messages_before} messages, "
          f"{result.signature.text()}{how}; {result.replays} replays")
    return 0


def _fail(message: str) -> int:
    print(f"fusetrace: error: {message}", file=sys.stderr)
    return 2
