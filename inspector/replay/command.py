"""`fusetrace replay`: the command line around `replay()`.

Exit status: 0 when every reply matched, 1 when the replay ran to its end and found
differences, 2 when it could not: a bad trace or command line (nothing is written then),
a server that crashed, hung or could not start.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..commandline import server_after_dashes
from . import replay
from .masks import DEFAULTS, Masks


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = ", ".join(dict.fromkeys(why for _, why in DEFAULTS))
    rep = sub.add_parser(
        "replay", help="replay a trace against a FUSE server, nothing mounted, and diff the replies",
        usage="fusetrace replay TRACE [--json] [-w NEW.fzt] [--mask OPCODE.FIELD ...] "
              "[--timeout S] [--overlap] [--strict-order] [--mountpoint PATH] -- SERVER [ARGS...]",
        description="Start SERVER as `fusetrace record` would (mountpoint included: it gets a "
                    "socket as /dev/fd/N in its place, nothing is mounted, no root needed), send "
                    "it the recorded requests in recorded order, and compare every reply, ioctl "
                    "and notification with the recorded ones. Node ids, file handles, backing "
                    "ids and directory offsets the server chooses are translated. Exit 0: no "
                    "differences; 1: differences; 2: error (bad trace, crash, hang).",
        epilog=f"Masked by default: {defaults} (*.atime, *.generation, *.ino …). A mask is "
               f"OPCODE.FIELD, e.g. GETATTR.attr.size, READ.data, *.blocks, NOTIFY_STORE.offset.")
    rep.add_argument("trace", metavar="TRACE", help="the recorded trace (.fzt)")
    rep.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    rep.add_argument("-w", "--write", metavar="NEW.fzt",
                     help="save the replayed conversation as a trace (for the TUI, or a diff)")
    rep.add_argument("--mask", action="append", default=[], metavar="OPCODE.FIELD",
                     help="do not compare this field (repeatable)")
    rep.add_argument("--no-default-masks", action="store_true",
                     help="compare times, generations and inode numbers too")
    rep.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="how long the server may take over one request (default %(default)s)")
    rep.add_argument("--overlap", action="store_true",
                     help="send requests with the recorded overlap instead of one at a time")
    rep.add_argument("--strict-order", action="store_true",
                     help="pair directory entries by position, not by name (the order counts)")
    rep.add_argument("--mountpoint", metavar="PATH",
                     help="which of SERVER's arguments is the mountpoint, when the guess is wrong")
    rep.add_argument("server", nargs=argparse.REMAINDER, metavar="SERVER [ARGS...]",
                     help=argparse.SUPPRESS)
    rep.set_defaults(run=run, replay_parser=rep)


def run(args: argparse.Namespace) -> int:
    server = server_after_dashes(args, args.replay_parser)
    try:
        masks = Masks(args.mask, defaults=not args.no_default_masks)
    except ValueError as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("fusetrace: error: --timeout must be more than 0", file=sys.stderr)
        return 2
    report = replay(args.trace, server, masks=masks, timeout=args.timeout, overlap=args.overlap,
                    write=args.write, mountpoint=args.mountpoint, strict_order=args.strict_order)
    if report.error and not report.counts:  # it never started: the one line says it all
        print(f"fusetrace: error: {report.error}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report.json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.text())
    sys.stdout.flush()
    if report.error:
        print(f"fusetrace: error: {report.error}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1
