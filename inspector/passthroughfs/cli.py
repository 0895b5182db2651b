"""`python -m inspector.passthroughfs SOURCE MOUNTPOINT [...]`: argument parsing, logging,
and the one place that sets up and tears down a session (mount, serve, unmount once)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Sequence

from .attrs import Timeouts
from .backing import BackingFiles
from .misbehave import SWITCHES, Misbehaviour, parse
from .mounting import Connection, MountOptions
from .ops import Operations
from .saving import save
from .server import Server
from .tracing import Tracer

log = logging.getLogger("inspector.passthroughfs")

_FLAG_OPTIONS = ("allow_other", "default_permissions")
_VALUE_OPTIONS = ("max_read", "entry_timeout", "attr_timeout", "max_stack_depth")


def _mount_options(values: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """`-o a,b=1 -o c` → {"a": "", "b": "1", "c": ""}; unknown names are an error."""
    options: dict[str, str] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            name, sep, arg = item.partition("=")
            if name in _FLAG_OPTIONS and not sep or name in _VALUE_OPTIONS and sep and arg:
                options[name] = arg
            else:
                parser.error(f"unknown or malformed mount option {item!r} (known: "
                             f"{', '.join(_FLAG_OPTIONS)}, {'=, '.join(_VALUE_OPTIONS)}=)")
    return options


def parse_args(argv: Sequence[str] | None = None,
               prog: str = "python -m inspector.passthroughfs") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Mirror SOURCE at MOUNTPOINT over the raw FUSE protocol, with FUSE "
                    "passthrough for regular files. MOUNTPOINT /dev/fd/N serves an "
                    "already-mounted connection on descriptor N.",
        epilog="misbehaviours: " + "; ".join(f"{k}: {v}" for k, v in SWITCHES.items()))
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                        help="allow_other, default_permissions, max_read=N, entry_timeout=S, "
                             "attr_timeout=S (default 1), max_stack_depth=N (default 1)")
    parser.add_argument("--no-passthrough", dest="passthrough", action="store_false",
                        help="serve READ/WRITE here instead of passing them through")
    parser.add_argument("--trace", metavar="FILE", help="record this server's own conversation")
    parser.add_argument("-s", "--snaplen", type=int, default=4096, metavar="N",
                        help="keep at most N bytes of file data per READ/WRITE in the trace, "
                             "recording the true length (0: keep all; default %(default)s)")
    parser.add_argument("--misbehave", action="append", default=[], metavar="SWITCH",
                        help="get passthrough wrong on purpose (repeatable), see below")
    parser.add_argument("--threads", type=int, default=4, metavar="N",
                        help="worker threads (default 4)")
    parser.add_argument("--mount-with", choices=("self", "fsmount", "fusermount3"),
                        default="self",
                        help="self: open /dev/fuse and mount(2) it (default); fsmount: open "
                             "it and mount with fsopen/fsconfig/fsmount/move_mount, falling "
                             "back to mount(2) as libfuse 3.17+ does; fusermount3: through "
                             "the helper, with _FUSE_COMMFD")
    parser.add_argument("--save-to", metavar="FILE",
                        help="after the session, write a summary of SOURCE to FILE, slowly "
                             "(as archive-backed servers write their archive)")
    parser.add_argument("--save-seconds", type=float, default=3.0, metavar="S",
                        help="how long writing --save-to takes (default %(default)s)")
    parser.add_argument("--notify-renames", action="store_true",
                        help="after a rename, invalidate the replaced entry (NOTIFY_INVAL_ENTRY) "
                             "from a thread of its own while the rename is answered, as rclone does")
    parser.add_argument("--clone-fd", action="store_true",
                        help="each worker reads and answers on a clone of the session's "
                             "descriptor (FUSE_DEV_IOC_CLONE), as libfuse's clone_fd does")
    parser.add_argument("-d", "--debug", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    args.options = _mount_options(args.options, parser)
    try:
        args.misbehave = parse(args.misbehave)
        args.timeouts = Timeouts(float(args.options.get("entry_timeout", 1.0)),
                                 float(args.options.get("attr_timeout", 1.0)))
        args.max_stack_depth = int(args.options.get("max_stack_depth", 1))
        max_read = args.options.get("max_read")
        args.mount_options = MountOptions("allow_other" in args.options,
                                          "default_permissions" in args.options,
                                          int(max_read) if max_read else None)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if not 1 <= args.max_stack_depth <= 2:
        parser.error("max_stack_depth must be 1 or 2 (FILESYSTEM_MAX_STACK_DEPTH)")
    if not os.path.isdir(args.source):
        parser.error(f"SOURCE {args.source!r} is not a directory")
    args.source = os.path.abspath(args.source)
    return args


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="passthroughfs %(levelname)s %(threadName)s: %(message)s")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Serve until unmounted; `prog` is the command that ran us (`fusetrace
    passthroughfs`), for the usage line and the trace header's argv."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog) if prog else parse_args(argv)
    setup_logging(args.debug)
    os.umask(0)  # the kernel already applied the caller's umask to the modes it sends
    misbehave: Misbehaviour = args.misbehave
    tracer = Tracer()
    conn: Connection | None = None
    status = 1
    try:
        if args.trace:
            tracer = Tracer.create(args.trace, {
                "source": "passthroughfs", "argv": [*(prog.split() if prog else sys.argv[:1]), *argv],
                "mountpoint": args.mountpoint, "kernel": os.uname().release,
                "source_dir": args.source, "passthrough": args.passthrough,
                "misbehave": sorted(misbehave.flags) + [
                    f"stall={op}:{s}" for op, s in misbehave.stalls.items()]}, args.snaplen)
        conn = Connection(args.mountpoint, args.mount_options, args.mount_with)
        ops = Operations(args.source, BackingFiles(conn.fd, tracer, misbehave),
                         args.timeouts, misbehave)
        server = Server(conn.fd, ops, tracer, misbehave, passthrough=args.passthrough,
                        threads=args.threads, max_stack_depth=args.max_stack_depth,
                        notify_renames=args.notify_renames, clone_fd=args.clone_fd)
        server.install_signal_handlers()
        conn.mount()
        status = server.serve()
        conn.unmount()
        server.join(1.0)
        if args.save_to:
            save(args.source, args.save_to, args.save_seconds)
    except OSError as exc:
        log.error("%s", exc)
    finally:
        # Workers may still sit in read(): the descriptor closes with the process.
        if conn is not None:
            conn.unmount()  # does nothing when already unmounted
        tracer.event("server_exit", status=status)
        tracer.close()
    return status


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`main`, then deaf to SIGTERM and SIGINT: the session is over, and a late signal (a
    test's cleanup racing our own exit) must not turn a clean exit into -15. Ignored
    signals stay ignored through interpreter shutdown."""
    status = main(argv, prog)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status
