"""The tables `fusetrace sql` and `export --parquet` give: every name, type and meaning,
declared once here.

`--help`, the `schema.json` beside a Parquet export, the Arrow schemas the builders fill
and the views `sql` creates over an export are all generated from `TABLES`. Where a
column is read from a message, `source` names the dissectors' field it comes from (a
field of the request's or reply's first structs, an id kind of `dissectors.ids`, or the
entry name); `inspector.sql.layout` finds it in each opcode's structs.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dissectors.ids import Id

#: SQL type (DuckDB's spelling; Spark, Trino and BigQuery have each) → Arrow type. Signed
#: only: several engines read no unsigned 64-bit Parquet column, so the protocol's u32
#: values are BIGINT and its u64 values BIGINT too, an id of 2**63 or more (a handle
#: of all ones) reading negative with the same bits.
ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "VARCHAR[]": pa.list_(pa.string()),
    "BIGINT[]": pa.list_(pa.int64()),
}

SCHEMA_VERSION = 1
PARTITION = "trace"  # the column a Parquet export is partitioned by (hive style: trace=NAME/)


@dataclass(frozen=True)
class Source:
    """Where a message column comes from: `field` of the first struct of the `side`'s body
    that has one, or the id of kind `id` there (`dissectors.ids`, with its condition), or
    `field` "name": the first NUL-terminated name after the fixed structs."""

    side: str  # "request", "reply" or "notify"
    field: str = ""
    id: Id | None = None


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a key of ARROW_TYPES
    doc: str
    sources: tuple[Source, ...] = ()  # read from a message: the first that applies

    @property
    def arrow(self) -> pa.DataType:
        return ARROW_TYPES[self.type]


@dataclass(frozen=True)
class Table:
    name: str
    row: str  # what one row is
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def arrow_schema(self, with_trace: bool = True) -> pa.Schema:
        """The Arrow schema; without `trace` for the files of a partitioned export."""
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns
                          if with_trace or c.name != PARTITION])


_TRACE = Column(PARTITION, "VARCHAR", "the trace's name: its file name without .fzt/.fzt.zst")
_RECORD = Column("record", "BIGINT", "record number in the trace (as `show` numbers it)")
_TS = Column("ts_ns", "BIGINT", "monotonic timestamp, ns")

TABLES: tuple[Table, ...] = (
    Table("traces", "trace file: its header and how it ends", (
        _TRACE,
        Column("path", "VARCHAR", "the file read"),
        Column("format", "BIGINT", "trace format version"),
        Column("tool", "VARCHAR", "fusetrace release that wrote it"),
        Column("created", "TIMESTAMPTZ", "when recording began (wall clock)"),
        Column("kernel", "VARCHAR", "kernel release of the recording machine"),
        Column("source", "VARCHAR", "what wrote it: proxy (fusetrace record), passthroughfs, "
                                    "replay, synthetic ..."),
        Column("argv", "VARCHAR[]", "the server's command line"),
        Column("mountpoint", "VARCHAR", "where the server was mounted"),
        Column("snaplen", "BIGINT", "file data bytes kept per READ/WRITE (0: all)"),
        Column("records", "BIGINT", "whole records read"),
        Column("bytes", "BIGINT", "file size"),
        Column("first_ns", "BIGINT", "timestamp of the first record"),
        Column("last_ns", "BIGINT", "timestamp of the last record"),
        Column("end_reason", "VARCHAR", "why the session ended (session_end's reason: "
                                        "unmounted ...), NULL when the trace lacks the end"),
        Column("cut", "VARCHAR", "where and why the trace is cut short; NULL when whole"),
        Column("minor", "BIGINT", "protocol minor INIT negotiated (NULL: no INIT)"),
        Column("dialect", "VARCHAR", "passthrough dialect: none, mainline or android"),
        Column("header", "VARCHAR", "the whole header as JSON"),
    )),
    Table("exchanges", "request with its reply (a reply whose request the trace lacks: "
                       "a row without the request's columns)", (
        _TRACE,
        Column("record", "BIGINT", "record number of the request"),
        Column("reply_record", "BIGINT", "record number of the reply (NULL: none)"),
        Column("unique", "BIGINT", "the request's unique"),
        Column("opcode", "VARCHAR", "LOOKUP, OPEN, READ ... (NULL when unknown)"),
        Column("nodeid", "BIGINT", "fuse_in_header.nodeid"),
        Column("fh", "BIGINT", "file handle the request names, or the one an OPEN, "
                                "OPENDIR or CREATE reply hands out",
               (Source("request", id=Id.FH), Source("reply", id=Id.FH))),
        Column("pid", "BIGINT", "calling process (fuse_in_header.pid)"),
        Column("uid", "BIGINT", "fuse_in_header.uid"),
        Column("gid", "BIGINT", "fuse_in_header.gid"),
        Column("error", "INTEGER", "errno of the reply, 0 for success (NULL: no reply)"),
        Column("error_name", "VARCHAR", "ENOENT, EACCES ...; OK for success"),
        Column("start_ns", "BIGINT", "timestamp of the request"),
        Column("end_ns", "BIGINT", "timestamp of the reply"),
        Column("latency_ns", "BIGINT", "end_ns - start_ns"),
        Column("request_bytes", "BIGINT", "request size as sent (fuse_in_header.len)"),
        Column("reply_bytes", "BIGINT", "reply size as sent (fuse_out_header.len)"),
        Column("name", "VARCHAR", "entry name (LOOKUP, CREATE, MKDIR, UNLINK, RENAME's old "
                                  "name, xattr names ...)", (Source("request", "name"),)),
        Column("offset", "BIGINT", "file or directory offset (READ, WRITE, READDIR, LSEEK ...)",
               (Source("request", "offset"),)),
        Column("size", "BIGINT", "bytes asked for (READ, WRITE, xattr buffers; SETATTR's "
                                  "new size)", (Source("request", "size"),)),
        Column("flags", "BIGINT", "the request's flags: open(2) flags of OPEN, CREATE, "
                                    "READ, WRITE, RELEASE; SETXATTR's ...",
               (Source("request", "flags"),)),
        Column("new_nodeid", "BIGINT", "node id an entry reply (LOOKUP, MKDIR, CREATE ...) "
                                        "hands out", (Source("reply", id=Id.NODE),)),
        Column("open_flags", "BIGINT", "FOPEN_* flags of an open reply (0x80: "
                                         "FOPEN_PASSTHROUGH)", (Source("reply", "open_flags"),)),
        Column("backing_id", "BIGINT", "backing id of a passthrough open reply",
               (Source("reply", id=Id.BACKING),)),
    )),
    Table("notifications", "notification the server sent (a message with unique 0)", (
        _TRACE, _RECORD, _TS,
        Column("notify", "VARCHAR", "NOTIFY_INVAL_INODE, NOTIFY_STORE ..."),
        Column("code", "INTEGER", "the notify code (fuse_out_header.error)"),
        Column("nodeid", "BIGINT", "the node it is about", (Source("notify", id=Id.NODE),)),
        Column("bytes", "BIGINT", "size as sent"),
    )),
    Table("ioctls", "/dev/fuse ioctl the server made", (
        _TRACE, _RECORD, _TS,
        Column("ioctl", "VARCHAR", "FUSE_DEV_IOC_BACKING_OPEN, FUSE_DEV_IOC_BACKING_CLOSE ..."),
        Column("cmd", "BIGINT", "the ioctl number"),
        Column("backing_id", "BIGINT", "id a successful BACKING_OPEN (or Android "
                                       "PASSTHROUGH_OPEN) returned, or the id BACKING_CLOSE "
                                       "closed"),
        Column("fd", "INTEGER", "file descriptor passed (BACKING_OPEN's fuse_backing_map.fd)"),
        Column("path", "VARCHAR", "the file behind that descriptor, read at call time"),
        Column("result", "BIGINT", "what the ioctl returned (-1 on error)"),
        Column("errno", "INTEGER", "0, or the error"),
        Column("pid", "BIGINT", "calling process"),
        Column("tid", "BIGINT", "calling thread"),
    )),
    Table("events", "session event: start notes, mounts, server exit, unmount, session end, "
                    "recorder notes", (
        _TRACE, _RECORD, _TS,
        Column("event", "VARCHAR", "the event's name (session_end, mount, server_exit ...)"),
        Column("detail", "VARCHAR", "the event's fields as JSON (json_extract_string(detail, "
                                    "'$.reason'))"),
    )),
    Table("lifecycles", "use of one id as the lifecycle pass (`check`, `follow`) saw it", (
        _TRACE,
        Column("kind", "VARCHAR", "backing, fh or node"),
        Column("key", "BIGINT", "the id"),
        Column("generation", "BIGINT", "0, then 1, 2 ... for each reuse of the id"),
        Column("label", "VARCHAR", "what it is (the backing file's path, directory handle ...)"),
        Column("state", "VARCHAR", "its state at the end of the trace"),
        Column("verdict", "VARCHAR", "closed properly, leaked, misused, still open at end "
                                     "of trace"),
        Column("first_record", "BIGINT", "record that opened it"),
        Column("last_record", "BIGINT", "its last record"),
        Column("first_ns", "BIGINT", "timestamp of first_record"),
        Column("last_ns", "BIGINT", "timestamp of last_record"),
        Column("events", "BIGINT", "records it took part in"),
        Column("anomalies", "VARCHAR[]", "codes of what went wrong with it (see anomalies)"),
    )),
    Table("anomalies", "anomaly `fusetrace check` reports", (
        _TRACE,
        Column("code", "VARCHAR", "stable slug: backing-leak, reply-rejected ..."),
        Column("severity", "VARCHAR", "error, warning or note"),
        Column("message", "VARCHAR", "the sentence `check` prints"),
        Column("first_record", "BIGINT", "the first record proving it"),
        Column("records", "BIGINT[]", "all records proving it"),
        Column("subject_kind", "VARCHAR", "backing, fh, node or request (NULL: none)"),
        Column("subject_key", "BIGINT", "that id"),
    )),
)

BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def help_text(width: int = 88) -> str:
    """The tables for `fusetrace sql --help`."""
    lines = ["tables (one row per ...):"]
    for table in TABLES:
        lines.append(textwrap.fill(f"{table.name}: one row per {table.row}", width,
                                   initial_indent="  ", subsequent_indent="      "))
        for col in table.columns:
            head = f"    {col.name:<14}{col.type:<12}"
            lines.append(textwrap.fill(col.doc, width, initial_indent=head,
                                       subsequent_indent=" " * len(head)))
    return "\n".join(lines)


def schema_document() -> dict[str, Any]:
    """The `schema.json` of a Parquet export."""
    return {
        "schema": "fusetrace-tables", "version": SCHEMA_VERSION, "partitioned_by": PARTITION,
        "layout": "TABLE/trace=NAME/part-0.parquet (hive partitioning: the trace column "
                  "comes from the directory name)",
        "tables": {t.name: {"row": t.row, "columns": [
            {"name": c.name, "type": c.type, "doc": c.doc} for c in t.columns]}
            for t in TABLES},
    }


def schema_json() -> str:
    return json.dumps(schema_document(), indent=2) + "\n"
