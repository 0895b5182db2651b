"""The `fusetrace` command line: one subcommand per job, errors as one line and exit 2."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from typing import Callable, Sequence

from traces import TraceReadError, TraceReader, hole_note

from . import __version__
from .damaged import EPILOG as DAMAGED_EPILOG, RULE, finish
from .exchange.flavour import Connect


def _show(args: argparse.Namespace) -> int:
    from .show import write_show

    if args.records is not None or args.filter is not None:
        return _show_range(args)
    reader = TraceReader(args.trace)
    write_show(reader, sys.stdout, args.verbose, args.hex, args.count)
    sys.stdout.flush()
    for note in map(hole_note, reader.holes):  # skipped, not damage: the records after it are kept
        print(f"fusetrace: {args.trace}: {note}", file=sys.stderr)
    return finish(args.trace, reader.tail, 0)


def _show_range(args: argparse.Namespace) -> int:
    from .ranges import indexed, parse_range, primed_decoder, records_in
    from .show import write_show

    from .query import QueryContext, QueryError, parse

    try:
        query = parse(args.filter) if args.filter is not None else None
    except QueryError as exc:
        print(f"fusetrace: error: {exc}\n{exc.pointer()}", file=sys.stderr)
        return 2
    with indexed(args.trace) as idx:
        try:
            rows: Sequence[int] = parse_range(args.records or ":", len(idx))
        except ValueError as exc:
            print(f"fusetrace: error: {exc}", file=sys.stderr)
            return 2
        if query is not None:
            rows = query.select(QueryContext(idx), rows[0] if rows else 0,
                                rows[-1] + 1 if rows else 0)
        dec = primed_decoder(idx, rows[0] if rows else 0)
        t0 = idx.ts(0) if len(idx) else None
        write_show(records_in(idx, rows, dec), sys.stdout, args.verbose, args.hex, args.count,
                   dec, t0)
        sys.stdout.flush()
        for note in map(hole_note, idx.holes):
            print(f"fusetrace: {args.trace}: {note}", file=sys.stderr)
        return finish(args.trace, idx.tail, 0)


def _check(args: argparse.Namespace) -> int:
    from .reports.check import failed, write_check, write_check_json
    from .reports.common import analysed

    with analysed(args.trace) as analysis:
        if args.json:
            write_check_json(analysis, sys.stdout)
        else:
            write_check(analysis, sys.stdout, args.all)
        return finish(args.trace, analysis.tail, 1 if failed(analysis) else 0)


_FOLLOW_KEYS = {"backing_id": "backing", "fh": "fh", "nodeid": "node", "unique": "request"}


def _follow(args: argparse.Namespace) -> int:
    from .reports.common import analysed
    from .reports.follow import write_follow, write_follow_json

    arg, kind = next((a, k) for a, k in _FOLLOW_KEYS.items() if getattr(args, a) is not None)
    key = getattr(args, arg)
    with analysed(args.trace) as analysis:
        write = write_follow_json if args.json else write_follow
        if not write(analysis, kind, key, sys.stdout):
            shown = hex(key) if arg == "fh" else key
            print(f"fusetrace: {args.trace}: no {arg.replace('_', ' ')} {shown} in the trace",
                  file=sys.stderr)
            return finish(args.trace, analysis.tail, 1)
        return finish(args.trace, analysis.tail, 0)


def _stats(args: argparse.Namespace) -> int:
    from .reports.common import analysed
    from .reports.stats import write_stats, write_stats_json

    with analysed(args.trace) as analysis:
        (write_stats_json if args.json else write_stats)(analysis, sys.stdout)
        return finish(args.trace, analysis.tail, 0)


def _number(text: str) -> int:
    """Ids as the trace prints them: decimal or 0x-hex."""
    return int(text, 0)


def _browse(args: argparse.Namespace) -> int:
    from tui.app import run_browse

    from traces import TraceIndex

    status = run_browse(args.trace, live=args.live, filter_text=args.filter)
    if status != 0:
        return status
    with TraceIndex.open(args.trace) as idx:
        tail = idx.tail
    if args.live and tail is not None and "incomplete record" in tail:
        tail = None  # the recorder is still writing its last record: not damage
    return finish(args.trace, tail, 0)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.write, args.no_passthrough)


def _record(args: argparse.Namespace) -> int:
    from .record import RecordConfig, record

    trace = args.write or time.strftime("fusetrace-%Y%m%d-%H%M%S.fzt")
    return record(RecordConfig(server=args.server, trace=trace, snaplen=args.snaplen,
                               quiet=args.quiet, options=args.options,
                               mountpoint=args.mountpoint, grace=args.grace,
                               connect=Connect(args.connect), spin_us=args.spin_us,
                               forward_only=args.forward_only))


def _cleanup(args: argparse.Namespace) -> int:
    from .record.cleanup import cleanup

    return cleanup(args.mountpoint, sys.stdout, sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    return serve(ServeConfig(args.trace, args.mountpoint, args.miss_errno, args.report,
                             args.quiet))


def _errno_arg(text: str) -> int:
    from .serve import parse_errno

    try:
        return parse_errno(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusetrace", description="Record, decode and inspect Linux FUSE sessions.",
        epilog=RULE)
    parser.add_argument("--version", action="version", version=f"fusetrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="print a trace, one line per message (tcpdump style)",
                          epilog=DAMAGED_EPILOG)
    show.add_argument("trace", help="trace file (.fzt)")
    show.add_argument("-v", "--verbose", action="store_true", help="full decoded tree of each message")
    show.add_argument("-x", "--hex", action="store_true", help="hex dump of each message")
    show.add_argument("-c", "--count", type=int, metavar="N", help="stop after N records")
    show.add_argument("-r", "--records", metavar="A:B",
                      help="only records A to B-1, at once on any size (uses the cached index; "
                           "negative numbers count from the end: -r=-20:)")
    show.add_argument("-f", "--filter", metavar="EXPR",
                      help="only matching records, e.g. 'op=OPEN,CREATE and nodeid=42', 'err', "
                           "'backing=3', 'lat>10ms' (see README: Browsing a trace)")
    show.set_defaults(run=_show)

    from .export.command import add_parsers as add_exports

    add_exports(sub)

    check = sub.add_parser(
        "check", help="list anomalies (leaked backing ids, rejected replies ...) with proof",
        description="Find what went wrong in a trace: backing ids leaked, closed twice or used "
                    "after close; BACKING_OPEN failures with their cause; replies the kernel "
                    "rejected; requests never answered; handles never released; nodes "
                    "forgotten too often; INIT oddities. Exit 0 when clean, 1 when anomalies "
                    "were found, 2 when the trace cannot be read, 3 when it is damaged (the "
                    "records before the damage checked).")
    check.add_argument("trace", help="trace file (.fzt)")
    check.add_argument("--json", action="store_true", help="machine-readable, for CI")
    check.add_argument("--all", action="store_true", help="list every case, not 20 per kind")
    check.set_defaults(run=_check)

    follow = sub.add_parser(
        "follow", help="one id's lifecycle as a timeline, with its verdict",
        description="Print every event of one backing id, file handle, node id or request, "
                    "from the ioctl or open to the release and close, then the verdict.",
        epilog="Exit 0, or 1 when the id is not in the trace. " + DAMAGED_EPILOG)
    follow.add_argument("trace", help="trace file (.fzt)")
    which = follow.add_mutually_exclusive_group(required=True)
    which.add_argument("--backing-id", type=_number, metavar="N")
    which.add_argument("--fh", type=_number, metavar="N")
    which.add_argument("--nodeid", type=_number, metavar="N")
    which.add_argument("--unique", type=_number, metavar="N")
    follow.add_argument("--json", action="store_true", help="machine-readable")
    follow.set_defaults(run=_follow)

    stats = sub.add_parser("stats", help="per-opcode counts, errors, latency percentiles, bytes",
                           epilog=DAMAGED_EPILOG)
    stats.add_argument("trace", help="trace file (.fzt)")
    stats.add_argument("--json", action="store_true", help="machine-readable")
    stats.set_defaults(run=_stats)

    rec = sub.add_parser(
        "record", help="run a FUSE server behind a recording proxy",
        usage="fusetrace record [-w TRACE] [-s SNAPLEN] [-q] [--connect HOW] [-o OPTS] "
              "[--mountpoint PATH] [--grace S] [--spin-us US] [--forward-only] "
              "-- SERVER [ARGS...]",
        description="Run SERVER as you would: fusetrace records every message between the "
                    "kernel and SERVER. As root, SERVER's command line is left as typed: "
                    "its own open of /dev/fuse (or its fusermount3 helper's) gets the "
                    "relay, and its mount is made for real as it asked. Otherwise fusetrace "
                    "mounts SERVER's mountpoint itself and hands SERVER a socket as /dev/fd/N "
                    "in its place (libfuse >= 3.3 servers accept that). Ends when the mount "
                    "is unmounted, the server exits, or on Ctrl-C; after the unmount it waits "
                    "for the server to exit for as long as it takes (Ctrl-C again kills it).",
        epilog="Exit status: the server's (0 when it ended cleanly); 2 when it could not "
               "start or never mounted; 130 when it had to be killed. With --connect dev-fd "
               "the mountpoint is the last of SERVER's arguments naming an existing "
               "directory; its -o options allow_other, default_permissions, ro, fsname=, "
               "subtype=, max_read= and mount flags (nosuid, noatime ...) apply to the mount.")
    rec.add_argument("-w", "--write", metavar="TRACE",
                     help="trace file to write (default: fusetrace-DATE-TIME.fzt)")
    rec.add_argument("-s", "--snaplen", type=int, default=4096, metavar="N",
                     help="keep at most N bytes of file data per READ/WRITE message, "
                          "recording the true length (0: keep all; default %(default)s)")
    rec.add_argument("-q", "--quiet", action="store_true",
                     help="no progress line and no summary on stderr")
    rec.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                     help="more mount options, on top of SERVER's own -o")
    rec.add_argument("--mountpoint", metavar="PATH",
                     help="which of SERVER's arguments is the mountpoint, when the guess is wrong")
    rec.add_argument("--connect", choices=[c.value for c in Connect], default="auto",
                     help="how SERVER gets its connection: auto (as root: let it mount by "
                          "itself; else dev-fd), device-open (it opens /dev/fuse and mounts), "
                          "helper (through fusermount3), dev-fd (fusetrace mounts, SERVER gets "
                          "/dev/fd/N); -o implies dev-fd")
    rec.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                     help="after the unmount, SIGTERM the server if it has not exited after "
                          "SECONDS and SIGKILL it after twice that (default: wait as long as "
                          "it takes; it may be saving data)")
    rec.add_argument("--spin-us", type=int, default=None, metavar="US",
                     help="how long the relay polls after a message before it sleeps: "
                          "fast servers answer sooner than a thread wakes (default 300 with "
                          "two CPUs or more and no thread waiting for a CPU, else 0; 0 sleeps "
                          "at once)")
    rec.add_argument("--forward-only", action="store_true",
                     help="relay without recording the messages (ioctls and session events "
                          "still are): what the relay alone costs, e.g. to compare with a "
                          "recording run, or to see whether a bug needs the recorder to show")
    rec.add_argument("server", nargs=argparse.REMAINDER, metavar="SERVER [ARGS...]",
                     help=argparse.SUPPRESS)
    rec.set_defaults(run=_record)

    clean = sub.add_parser("cleanup", help="unmount mounts left by a recorder that died",
                           description="Lazily unmount FUSE mounts whose fusetrace recorder "
                                       "died (they answer ENOTCONN: disconnected).")
    clean.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                       help="only this mount (also one fusetrace has no note of, if it is "
                            "disconnected)")
    clean.set_defaults(run=_cleanup)

    srv = sub.add_parser(
        "serve", help="mount a trace as a mock filesystem that answers from recorded replies",
        description="Mount TRACE on MOUNTPOINT and answer the kernel's requests with the "
                    "recorded replies, matched by opcode, node id and arguments. Runs until "
                    "unmounted or Ctrl-C; then reports the requests the trace had no reply "
                    "for, each with the closest recorded request and the fields that differ.",
        epilog="Exit status: 0 every request was answered from the trace, 1 some were not, "
               "2 the trace or the mount failed. Passthrough opens are served without "
               "passthrough: the reads they made never reached the trace and get the miss "
               "errno.")
    srv.add_argument("trace", help="trace file (.fzt)")
    srv.add_argument("mountpoint", help="directory to mount the trace on")
    srv.add_argument("--miss-errno", type=_errno_arg, default=errno.EIO, metavar="ERRNO",
                     help="error for requests the trace cannot answer, by name or number "
                          "(default EIO: unlike ENOSYS, the kernel does not take it as "
                          "'never ask again' and does not turn it into success)")
    srv.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    srv.add_argument("-q", "--quiet", action="store_true",
                     help="no banner; the report only when something was not answered")
    srv.set_defaults(run=_serve)

    browse = sub.add_parser("browse", help="browse a trace in the terminal (Textual TUI)",
                            description="Scroll, filter and follow ids through a trace of any "
                                        "size; press ? inside for the keys.",
                            epilog=DAMAGED_EPILOG)
    browse.add_argument("trace", help="trace file (.fzt)")
    browse.add_argument("--live", action="store_true",
                        help="keep reading records a running `fusetrace record` appends")
    browse.add_argument("-f", "--filter", metavar="EXPR", help="start with this filter")
    browse.set_defaults(run=_browse)

    from .sql.command import add_parser as add_sql

    add_sql(sub)

    from .replay.command import add_parser as add_replay

    add_replay(sub)

    from .reduce.command import add_parser as add_reduce

    add_reduce(sub)

    from .fuzz.command import add_parser as add_fuzz

    add_fuzz(sub)

    demo = sub.add_parser("demo", help="record the bundled passthrough filesystem through the proxy, "
                                       "use it, show its trace")
    demo.add_argument("-w", "--write", default="demo.fzt", metavar="TRACE",
                      help="where to write the trace (default: %(default)s)")
    demo.add_argument("--no-passthrough", action="store_true", help="serve reads and writes in Python")
    demo.set_defaults(run=_demo)

    for name, what in _VERBATIM_HELP.items():  # listed here, run by `main` (see _VERBATIM)
        sub.add_parser(name, help=what, add_help=False)
    return parser


def _passthroughfs(argv: list[str]) -> int:
    from .passthroughfs.cli import run

    return run(argv, prog="fusetrace passthroughfs")


def _python(argv: list[str]) -> int:
    """Replace this process with fusetrace's interpreter: its packages, pytest plugin and
    the bundled server importable, whatever `python` on PATH is."""
    os.execv(sys.executable, [sys.executable, *argv])


#: subcommands whose arguments all belong to another program: argparse would take their
#: options (`-h`, `-m`) for fusetrace's, so `main` hands them over untouched
_VERBATIM: dict[str, Callable[[list[str]], int]] = {
    "passthroughfs": _passthroughfs, "python": _python}
_VERBATIM_HELP = {
    "passthroughfs": "run the bundled passthrough filesystem: fusetrace passthroughfs SOURCE "
                     "MOUNTPOINT [-h for its options]",
    "python": "run fusetrace's Python (its packages and pytest plugin importable): "
              "fusetrace python -m pytest ...",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _VERBATIM:
        return _VERBATIM[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except TraceReadError as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `fusetrace show | head`: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except OSError as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
