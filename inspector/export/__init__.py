"""Traces in the tools people already use: `fusetrace export --perfetto` (Chrome
trace-event JSON), `--pcapng` with a generated Wireshark Lua dissector, `--parquet` (the
`sql` tables as a dataset for DuckDB, Spark, Trino ...), and the
`compress`/`decompress`/`wireshark-plugin` commands. JSON lines stay in `inspector.show`
beside the text view they share a decoder pass with.

Every single-file export converts the whole trace before it writes, through
`output.atomic_output`, so a cut or garbled trace is one line on stderr, exit 2, and no
file. `--parquet` is a dataset a fleet adds traces to: a cut trace gives the rows of its
whole records (its `traces` row says where it was cut) and stderr says so.
"""
