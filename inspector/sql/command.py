"""`fusetrace sql [-e QUERY] [--csv|--json] SOURCE...`: traces as tables in an embedded DuckDB.

A SOURCE is a trace (its tables read from the Parquet files `store` keeps for it, built on
first use) or a directory `export --parquet` wrote (read where it lies: a fleet's traces
are exported once and queried many times). Each table is one view over all sources, so
DuckDB streams them rather than holding them. Without -e the statements come from
standard input: a shell on a terminal, a script otherwise.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import json
import math
import os
import sys
from typing import IO, Any, Callable, Iterable, Sequence

from .schema import PARTITION, TABLES, help_text

_BATCH = 10_000


class SqlError(Exception):
    """A statement DuckDB refused; the message is one line."""


def one_line(message: str) -> str:
    """DuckDB's message ("Parser Error: ...\\n\\nLINE 1: ...") as one line, without the
    echo of the statement."""
    kept = []
    for line in message.splitlines():
        if line.startswith("LINE ") or (kept and not line.strip() and len(kept) > 1):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept) or message.strip()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Database:
    """A DuckDB connection with the tables of the given traces and exports as views: a
    trace's from its cached Parquet files (`store`), built where missing or stale."""

    def __init__(self, traces: Sequence[str], exports: Sequence[str] = (),
                 warn: Callable[[str, str], None] = lambda path, tail: None) -> None:
        from ..export.parquet import table_glob
        from .sources import trace_names
        from .store import cached_tables

        cached = cached_tables(list(traces), warn)  # before DuckDB starts its threads
        import duckdb

        self.con = duckdb.connect(":memory:")
        for table in TABLES:
            columns = ", ".join(f'"{c.name}"' for c in table.columns)
            parts = [f"SELECT {_quote(name)} AS {PARTITION}, * FROM read_parquet("
                     f"{_quote(c.file(table.name))})"
                     for name, c in zip(trace_names(list(traces)), cached)]
            parts += [f"SELECT {columns} FROM read_parquet({_quote(table_glob(out, table.name))}, "
                      f"hive_partitioning = true, hive_types = {{'{PARTITION}': VARCHAR}})"
                      for out in exports]
            try:
                self.con.execute(f'CREATE VIEW "{table.name}" AS ' + " UNION ALL ".join(parts))
            except duckdb.Error as exc:  # an export made by another release, or damaged
                raise SqlError(f"cannot open the {table.name} table: {one_line(str(exc))}") from None

    def run(self, sql: str) -> Iterable[tuple[list[str], Any]]:
        """Execute each statement of `sql`; (column names, cursor) of those giving rows."""
        import duckdb

        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            raise SqlError(one_line(str(exc))) from None
        for statement in statements:
            try:
                cursor = self.con.execute(statement)
            except duckdb.Error as exc:
                raise SqlError(one_line(str(exc))) from None
            if cursor.description:
                yield [d[0] for d in cursor.description], cursor


# --- output -------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _batches(cursor: Any) -> Iterable[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(_BATCH):
        yield rows


def write_csv(names: list[str], cursor: Any, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for rows in _batches(cursor):
        writer.writerows([_cell(v) for v in row] for row in rows)


def _cell(value: Any) -> Any:
    value = _plain(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_json(names: list[str], cursor: Any, out: IO[str]) -> None:
    """One JSON object per row and line (NaN and infinities, which JSON lacks, as null)."""
    for rows in _batches(cursor):
        out.write("".join(json.dumps(dict(zip(names, map(_json_value, row)))) + "\n"
                          for row in rows))


def _json_value(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def write_table(names: list[str], cursor: Any, out: IO[str], max_rows: int) -> None:
    """At most `max_rows` rows as a table (rich on a terminal, a Markdown table otherwise),
    then how many rows there were."""
    rows = cursor.fetchmany(max_rows)
    more = 0
    while extra := cursor.fetchmany(_BATCH):
        more += len(extra)
    right = [any(isinstance(r[k], (int, float, decimal.Decimal)) and not isinstance(r[k], bool)
                 for r in rows) for k in range(len(names))]
    cells = [["NULL" if v is None else _text(v) for v in row] for row in rows]
    total = len(rows) + more
    note = (f"({total} row{'s' if total != 1 else ''}"
            f"{f', the first {len(rows)} shown (--csv or --json print all)' if more else ''})")
    if out.isatty():
        _rich_table(names, cells, right, note, out)
        return
    widths = [max([len(n)] + [len(r[k]) for r in cells]) for k, n in enumerate(names)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if r else v.ljust(w)
                                 for v, w, r in zip(values, widths, right)) + " |\n"

    out.write(line(names))
    out.write("|" + "|".join(("-" * (w + 1) + ":") if r else "-" * (w + 2)
                             for w, r in zip(widths, right)) + "|\n")
    out.write("".join(line(r) for r in cells))
    out.write(note + "\n")


def _rich_table(names: list[str], cells: list[list[str]], right: list[bool], note: str,
                out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for name, r in zip(names, right):
        table.add_column(name, justify="right" if r else "left", overflow="fold")
    for row in cells:
        table.add_row(*(Text(v, style="dim") if v == "NULL" else Text(v) for v in row))
    console = Console(file=out, highlight=False)
    console.print(table)
    console.print(note, style="dim")


def _text(value: Any) -> str:
    value = _plain(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def write_result(names: list[str], cursor: Any, out: IO[str], fmt: str, max_rows: int) -> None:
    if fmt == "csv":
        write_csv(names, cursor, out)
    elif fmt == "json":
        write_json(names, cursor, out)
    else:
        write_table(names, cursor, out, max_rows)


# --- the command --------------------------------------------------------------------------

_SHELL_HELP = """\
Statements end with ';'. Commands:
  .tables           the tables
  .schema [TABLE]   their columns, types and meaning
  .help             this
  .quit             leave (also Ctrl-D)"""


def _schema_lines(which: str | None) -> str:
    """The --help text of all tables, or of table `which`."""
    lines = help_text().splitlines()
    if which is None:
        return "\n".join(lines)
    start = next((k for k, line in enumerate(lines) if line.startswith(f"  {which}: ")), None)
    if start is None:
        return f"no table {which}"
    end = next((k for k in range(start + 1, len(lines)) if not lines[k].startswith("    ")),
               len(lines))
    return "\n".join(lines[start:end])


def shell(db: Database, fmt: str, max_rows: int) -> int:
    """Read statements from a terminal until .quit or Ctrl-D."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(f"fusetrace sql: tables {', '.join(t.name for t in TABLES)}; .help for help",
          file=sys.stderr)
    pending: list[str] = []
    while True:
        try:
            line = input("   ...> " if pending else "sql> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            pending.clear()
            continue
        if not pending and line.strip().startswith("."):
            word, _, arg = line.strip().partition(" ")
            if word in (".quit", ".exit"):
                return 0
            if word == ".tables":
                print("  ".join(t.name for t in TABLES))
            elif word == ".schema":
                print(_schema_lines(arg.strip() or None))
            else:
                print(_SHELL_HELP)
            continue
        pending.append(line)
        sql = "\n".join(pending).strip()
        if not sql.endswith(";"):
            continue
        pending.clear()
        try:
            for names, cursor in db.run(sql):
                write_result(names, cursor, sys.stdout, fmt, max_rows)
        except SqlError as exc:
            print(f"fusetrace: sql: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("fusetrace: sql: interrupted", file=sys.stderr)


def run_sql(args: argparse.Namespace) -> int:
    from ..damaged import Damage
    from ..export.parquet import is_export

    traces, exports = [], []
    for source in args.source:
        if os.path.isdir(source):
            if not is_export(source):
                print(f"fusetrace: error: {source} is a directory but no `export --parquet` "
                      f"output (it has no schema.json)", file=sys.stderr)
                return 2
            exports.append(source)
        else:
            traces.append(source)
    fmt = "csv" if args.csv else "json" if args.json else "table"
    damage = Damage()
    try:
        db = Database(traces, exports, damage)
    except SqlError as exc:
        print(f"fusetrace: error: {exc}", file=sys.stderr)
        return 2
    if args.execute is None and sys.stdin.isatty():
        return damage.status(shell(db, fmt, args.max_rows))
    sql = args.execute if args.execute is not None else sys.stdin.read()
    try:
        for names, cursor in db.run(sql):
            write_result(names, cursor, sys.stdout, fmt, args.max_rows)
            sys.stdout.flush()
    except SqlError as exc:
        print(f"fusetrace: sql: {exc}", file=sys.stderr)
        return 2
    return damage.status(0)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def add_parser(sub: Any) -> None:
    """Add `sql` to the `fusetrace` parser's subparsers."""
    sql = sub.add_parser(
        "sql", help="query traces with SQL (embedded DuckDB)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Open traces as SQL tables in an embedded DuckDB and run QUERY, or read "
                    "statements from standard input\n(a shell on a terminal: .help, .schema, "
                    ".quit). Each table holds the rows of every TRACE, told apart\nby its "
                    "`trace` column. A cut trace gives the rows of its whole records (stderr "
                    "says so);\nSQL DuckDB refuses is one line on stderr and exit 2.",
        epilog=help_text() + "\n\nexample:\n  fusetrace sql -e \"SELECT opcode, count(*), "
               "quantile_cont(latency_ns, 0.99) AS p99_ns\n      FROM exchanges GROUP BY "
               "opcode ORDER BY 2 DESC\" demo.fzt")
    sql.add_argument("-e", "--execute", metavar="QUERY",
                     help="the statements to run (several: separated by ';')")
    fmt = sql.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    fmt.add_argument("--json", action="store_true", help="one JSON object per row and line")
    sql.add_argument("--max-rows", type=_positive, default=1000, metavar="N",
                     help="rows a table shows (default %(default)s; --csv and --json print all)")
    sql.add_argument("source", nargs="+", metavar="TRACE",
                     help="trace file (.fzt, .fzt.zst), or a directory `export --parquet` wrote")
    sql.set_defaults(run=run_sql)
