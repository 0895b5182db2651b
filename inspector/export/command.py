"""The command lines of `export`, `wireshark-plugin`, `compress` and `decompress`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..damaged import EPILOG as DAMAGED_EPILOG, finish


def _fail(exc: Exception) -> int:
    print(f"fusetrace: error: {exc}", file=sys.stderr)
    return 2


def _export(args: argparse.Namespace) -> int:
    from .output import ExportError

    if args.parquet is not None:
        return _export_parquet(args)
    if len(args.trace) > 1:
        return _fail(ValueError("only --parquet exports several traces at once"))
    args.trace = args.trace[0]
    try:
        if args.perfetto:
            from .perfetto import write_perfetto

            tail = write_perfetto(args.trace, args.output)
        elif args.pcapng:
            from .pcapng import write_pcapng

            tail = write_pcapng(args.trace, args.output)
        else:
            from ..show import write_jsonl
            from traces import TraceReader
            from .output import atomic_output

            with TraceReader(args.trace) as reader, atomic_output(args.output, False) as out:
                write_jsonl(reader, out)  # type: ignore[arg-type]
            tail = reader.tail
    except ExportError as exc:
        return _fail(exc)
    return finish(args.trace, tail, 0)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _export_parquet(args: argparse.Namespace) -> int:
    from ..damaged import Damage
    from .output import ExportError
    from .parquet import write_parquet

    if args.output != "-":
        return _fail(ValueError("--parquet writes to the directory it names, not to -o"))
    damage = Damage()
    try:
        write_parquet(args.parquet, args.trace, damage)
    except ExportError as exc:
        return _fail(exc)
    return damage.status(0)


def _compress(args: argparse.Namespace) -> int:
    """Convert, then index what was written: the line says what it holds, the index is
    the one every later command wants, and the pass finds damage that the bytes carried
    over (a trace cut short stays cut in either form)."""
    import os

    from traces.opening import compress_file, decompress_file

    from ..ranges import indexed

    if args.command == "compress":
        frames_note = compress_file(args.trace, args.output, args.level)
        target = args.output or args.trace + ".zst"
    else:
        frames_note = decompress_file(args.trace, args.output)
        target = args.output or args.trace[:-len(".zst")]
    with indexed(target) as idx:
        records, tail = len(idx), idx.tail
    before, after = os.path.getsize(args.trace), os.path.getsize(target)
    print(f"fusetrace: wrote {target}: {records:,} records, {_size(after)} from "
          f"{_size(before)} ({after / max(before, 1):.2f} of the size)", file=sys.stderr)
    return finish(args.trace, frames_note or tail, 0)


def _wireshark_plugin(args: argparse.Namespace) -> int:
    from .wireshark import install, plugin_path

    print(install() if args.install else plugin_path())
    return 0


def add_parsers(sub: Any) -> None:
    """Add the subcommands to the `fusetrace` parser's subparsers."""
    export = sub.add_parser(
        "export", help="write a trace for other tools: JSON lines, Perfetto, Wireshark, Parquet",
        description="Convert a trace: --jsonl (default) one JSON object per record for "
                    "scripts; --perfetto Chrome trace-event JSON for ui.perfetto.dev and "
                    "chrome://tracing; --pcapng a capture for Wireshark and tshark "
                    "(decoded by `fusetrace wireshark-plugin`); --parquet OUT the tables of "
                    "`fusetrace sql` for DuckDB, Spark, Trino, Polars or pandas, several "
                    "traces at once.",
        epilog="A damaged trace is exported up to the damage, in every format: exit 3 and "
               "one line on stderr (fusetrace --help). An export that fails leaves no "
               "output file behind.")
    fmt = export.add_mutually_exclusive_group()
    fmt.add_argument("--jsonl", action="store_true", help="JSON lines (the default)")
    fmt.add_argument("--perfetto", action="store_true",
                     help="Chrome trace-event JSON: a track per requesting thread, a slice per "
                          "request, backing ids as spans with flow arrows to their opens")
    fmt.add_argument("--pcapng", action="store_true",
                     help="pcapng, every record a packet (link type USER0, ns timestamps); "
                          "tshark -X lua_script:$(fusetrace wireshark-plugin) -r OUT decodes it")
    fmt.add_argument("--parquet", metavar="OUT",
                     help="a Parquet dataset in directory OUT: OUT/TABLE/trace=NAME/*.parquet "
                          "for each table of `fusetrace sql --help` and each TRACE, and "
                          "OUT/schema.json; a cut trace gives the rows of its whole records")
    export.add_argument("-o", "--output", default="-", metavar="OUT",
                        help="file to write (default -: standard output)")
    export.add_argument("trace", nargs="+", metavar="TRACE",
                        help="trace file (.fzt or .fzt.zst); several only with --parquet")
    export.set_defaults(run=_export)

    plugin = sub.add_parser(
        "wireshark-plugin", help="print the path of the Wireshark dissector for --pcapng",
        description="The Lua dissector is generated from fusetrace's own decoders into "
                    "the cache (again whenever they changed) and its path printed, for "
                    "`tshark -X lua_script:PATH` or Wireshark's -X option.")
    plugin.add_argument("--install", action="store_true",
                        help="copy it to Wireshark's personal plugin folder "
                             "(~/.local/lib/wireshark/plugins) and print that path")
    plugin.set_defaults(run=_wireshark_plugin)

    comp = sub.add_parser(
        "compress", help="compress a trace with zstd in independent frames (.fzt.zst)",
        description="Every command reads the compressed trace as it reads the plain one, "
                    "random access included. Says what it wrote, with the sizes.",
        epilog=DAMAGED_EPILOG)
    comp.add_argument("trace", help="trace file (.fzt)")
    comp.add_argument("-o", "--output", metavar="OUT", help="default: TRACE.zst")
    comp.add_argument("-l", "--level", type=int, default=3, metavar="N",
                      help="zstd level (default %(default)s)")
    comp.set_defaults(run=_compress)

    decomp = sub.add_parser("decompress", help="a .fzt.zst trace back to a plain .fzt",
                            epilog="A compressed trace cut short is written up to its last "
                                   "whole frame: one warning line on stderr and exit 3.")
    decomp.add_argument("trace", help="compressed trace (.fzt.zst)")
    decomp.add_argument("-o", "--output", metavar="OUT",
                        help="default: TRACE without its .zst")
    decomp.set_defaults(run=_compress)

