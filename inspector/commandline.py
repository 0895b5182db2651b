"""Command-line pieces the subcommands that run a server under test share (replay,
reduce, fuzz)."""

from __future__ import annotations

import argparse


def server_after_dashes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """SERVER [ARGS...] from after `--`: argparse's REMAINDER takes all that follows TRACE,
    so options typed between TRACE and `--` are parsed here, as options."""
    server = list(args.server)
    if "--" in server:
        at = server.index("--")
        parser.parse_args([*server[:at], args.trace], namespace=args)
        server = server[at + 1:]
    return server
