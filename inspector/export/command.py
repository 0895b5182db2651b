"""The command line of `export`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _fail(exc: Exception) -> int:
    print(f"fusetrace: error: {exc}", file=sys.stderr)
    return 2


def _export(args: argparse.Namespace) -> int:
    from .output import ExportError

    try:
        if args.perfetto:
            from .perfetto import write_perfetto

            write_perfetto(args.trace, args.output)
        else:
            from ..show import write_jsonl
            from traces import TraceReader
            from .output import atomic_output

            with TraceReader(args.trace) as reader, atomic_output(args.output, False) as out:
                write_jsonl(reader, out)  # type: ignore[arg-type]
    except ExportError as exc:
        return _fail(exc)
    return 0


def add_parsers(sub: Any) -> None:
    """Add the subcommands to the `fusetrace` parser's subparsers."""
    export = sub.add_parser(
        "export", help="write a trace for other tools: JSON lines, Perfetto",
        description="Convert a trace: --jsonl (default) one JSON object per record for "
                    "scripts; --perfetto Chrome trace-event JSON for ui.perfetto.dev and "
                    "chrome://tracing.",
        epilog="A cut or garbled trace is refused with exit 2 (--perfetto) and "
               "leaves no output file behind.")
    fmt = export.add_mutually_exclusive_group()
    fmt.add_argument("--jsonl", action="store_true", help="JSON lines (the default)")
    fmt.add_argument("--perfetto", action="store_true",
                     help="Chrome trace-event JSON: a track per requesting thread, a slice per "
                          "request, backing ids as spans with flow arrows to their opens")
    export.add_argument("-o", "--output", default="-", metavar="OUT",
                        help="file to write (default -: standard output)")
    export.add_argument("trace", help="trace file (.fzt)")
    export.set_defaults(run=_export)

